"""``lungseg infer --ray`` on a real two-node Ray cluster started on this machine (``ray start``): the same
outputs as a single-process run, a corrupt file named while the rest is done, a worker killed mid-run and
a driver killed mid-run, each leaving every film with exactly one set of outputs.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SAMPLE_DATA
from ray_cluster import RayCluster, processes_matching, require_ray, running_ray_cluster

from lungseg_monai.cli import main
from lungseg_monai.inference.cluster import ClusterOptions
from lungseg_monai.inference.runner import segment_files

SAMPLES = sorted((SAMPLE_DATA / "images").glob("*.png"))
OUTPUT_FOLDERS = ("masks", "overlays")
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    with running_ray_cluster() as running:
        yield running


def _films(folder: Path, count: int) -> Path:
    """``count`` real chest films (the shipped samples, repeated under new names)."""
    folder.mkdir(parents=True)
    for i in range(count):
        shutil.copyfile(SAMPLES[i % len(SAMPLES)], folder / f"film{i:03d}.png")
    return folder


# `lungseg infer` with the driver's manifest saved every SECONDS (sys.argv[1]) instead of every 10 s.
_SAVING_EVERY = """
import sys
import lungseg_monai.inference.runner as runner
runner.SAVE_EVERY_S = float(sys.argv.pop(1))
from lungseg_monai.cli import main
sys.exit(main())
"""


def _infer(
    cluster: RayCluster, films: Path, out: Path, *extra: str, save_every: float | None = None
) -> subprocess.Popen:
    command = ["-m", "lungseg_monai.cli"] if save_every is None else ["-c", _SAVING_EVERY, str(save_every)]
    args = [sys.executable, *command, "infer", str(films), "-o", str(out), "--no-progress"]
    args += ["--ray", cluster.address, "--precision", "fp32", "--films-per-task", "4", *extra]
    return subprocess.Popen(args, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "measurements.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    names = [r["name"] for r in rows]
    assert len(names) == len(set(names)), "a film has two measurement rows"
    return {r["name"]: r for r in rows}


def _assert_one_set_each(out: Path, names: set[str]) -> None:
    """Every film: one mask, one overlay, one row, vouched for by the manifest; nothing else, no temporaries."""
    for folder in OUTPUT_FOLDERS:
        files = sorted(p.name for p in (out / folder).iterdir())
        assert files == sorted(f"{n}.png" for n in names), f"{folder}: {set(files) ^ {f'{n}.png' for n in names}}"
    assert set(_rows(out)) == names
    manifest = json.loads((out / "manifest.json").read_text())["names"]
    assert {n for n, e in manifest.items() if {"mask", "overlay", "measurements"} <= set(e["outputs"])} == names


def _wait_for(condition, what: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the run ended before {what}: {process.communicate()[0][-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout} s")
        time.sleep(0.2)


def test_ray_run_equals_single_process_and_names_a_corrupt_file(cluster: RayCluster, tmp_path: Path) -> None:
    films = _films(tmp_path / "films", 10)
    (films / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(2000))  # a PNG cut short
    single = segment_files([films], tmp_path / "single", "vgg16", precision="fp32", progress=False)
    assert [s.path.name for s in single.failed] == ["broken.png"]

    code, output = _finish(_infer(cluster, films, tmp_path / "ray"))
    assert code == 1, output  # a file failed: the exit code says so, as without --ray
    assert "FAILED" in output and "broken.png" in output
    assert "10 segmented, 0 rejected, 0 already done, 0 skipped, 1 failed" in output
    for folder in OUTPUT_FOLDERS:
        for mask in (tmp_path / "single" / folder).iterdir():
            assert (tmp_path / "ray" / folder / mask.name).read_bytes() == mask.read_bytes(), mask.name
    ray_rows, single_rows = _rows(tmp_path / "ray"), _rows(tmp_path / "single")
    assert set(ray_rows) == set(single_rows) == {f"film{i:03d}" for i in range(10)}
    for name, row in single_rows.items():  # the same row; the input column holds the absolute path under --ray
        assert {k: v for k, v in ray_rows[name].items() if k != "input"} == {k: v for k, v in row.items() if k != "input"}
        assert Path(ray_rows[name]["input"]) == Path(row["input"]).resolve()

    code, output = _finish(_infer(cluster, films, tmp_path / "ray"))  # a rerun keeps everything
    assert "0 segmented, 0 rejected, 10 already done" in output, output


def test_a_worker_killed_mid_run_loses_no_film_and_writes_none_twice(cluster: RayCluster, tmp_path: Path) -> None:
    films, out = _films(tmp_path / "films", 48), tmp_path / "out"
    run = _infer(cluster, films, out)
    masks = out / "masks"
    _wait_for(lambda: masks.is_dir() and len(list(masks.glob("*.png"))) >= 4, "first masks", run)
    workers = processes_matching("FilmWorker")
    assert workers, "no Ray actor process running FilmWorker"
    os.kill(workers[0], signal.SIGKILL)
    code, output = _finish(run)
    assert code == 0, output
    assert "48 segmented, 0 rejected, 0 already done, 0 skipped, 0 failed" in output, output
    _assert_one_set_each(out, {f"film{i:03d}" for i in range(48)})


def test_a_killed_driver_is_resumed_by_a_rerun_that_does_only_the_rest(cluster: RayCluster, tmp_path: Path) -> None:
    films_count = 48
    films, out = _films(tmp_path / "films", films_count), tmp_path / "out"
    run = _infer(cluster, films, out, save_every=1.0)  # the first save comes soon: fewer films suffice

    def recorded() -> int:
        try:
            names = json.loads((out / "manifest.json").read_text())["names"]
        except (OSError, ValueError):
            return 0
        return sum("mask" in entry["outputs"] for entry in names.values())

    _wait_for(lambda: recorded() >= 1, "a saved manifest", run)
    os.killpg(run.pid, signal.SIGKILL)  # the driver (and nothing of the cluster: its actors die with their job)
    run.wait()
    done_before = recorded()
    assert 0 < done_before < films_count

    code, output = _finish(_infer(cluster, films, out))
    assert code == 0, output
    line = next(line for line in output.splitlines() if " segmented, " in line)
    segmented, already = int(line.split(" segmented")[0].split()[-1]), int(line.split(" already done")[0].split()[-1])
    assert already >= done_before and segmented + already == films_count, line
    assert segmented < films_count
    _assert_one_set_each(out, {f"film{i:03d}" for i in range(films_count)})


def test_ray_options_need_ray_and_a_model_file(tmp_path: Path) -> None:
    assert main(["infer", str(SAMPLES[0]), "-o", str(tmp_path / "o"), "--actors", "2"]) == 1  # --actors without --ray
    with pytest.raises(ValueError, match="actors, cpus_per_actor and films_per_task"):
        ClusterOptions(films_per_task=0)
    from lungseg_monai.inference import LungSegmenter

    require_ray()
    with pytest.raises(ValueError, match="not a LungSegmenter"):
        segment_files([SAMPLES[0]], tmp_path / "o", LungSegmenter.from_model("vgg16"), cluster=ClusterOptions())


def test_jobs_and_outcomes_travel_as_json_and_come_back_equal(tmp_path: Path) -> None:
    from lungseg_monai.inference.discovery import InferenceInput
    from lungseg_monai.inference.execute import SEGMENTED, FilmOutcome, Job
    from lungseg_monai.qc.quality import QCResult

    item = InferenceInput(tmp_path / "a b.dcm", "1.2.3", True, "1.2", "1.2.9")
    job = Job(item, {"mask": tmp_path / "masks" / "1.2.3.png"}, True, tmp_path / "dicomseg" / "1.2.3.dcm")
    again = Job.from_json(job.to_json())
    assert (again.item, again.targets, again.measure, again.seg_kept) == (job.item, job.targets, True, job.seg_kept)
    qc = QCResult("review", 0.91, ("estimated Dice 0.91 < 0.94",), {"soft_dice": 0.97})
    outcome = FilmOutcome("1.2.3", item.path, SEGMENTED, "", [job.targets["mask"]], ["mask"], qc, {"name": "1.2.3"})
    assert FilmOutcome.from_json(outcome.to_json()) == outcome


def test_a_worker_settings_error_is_found_inside_rays_wrappers() -> None:
    from lungseg_monai.inference.cluster import WorkerSettingsError, _settings_error

    inner = WorkerSettingsError("the worker on node2 would make outputs under other settings (precision ...)")
    try:
        try:
            raise inner
        except WorkerSettingsError as e:
            raise RuntimeError("ActorDiedError: the actor died in its constructor") from e
    except RuntimeError as wrapped:
        assert _settings_error(wrapped) == str(inner)
    text = RuntimeError("ray.exceptions.RayTaskError: ...\nWorkerSettingsError: the worker on n1 would make outputs")
    assert _settings_error(text) == "the worker on n1 would make outputs"
    assert _settings_error(RuntimeError("node lost")) is None
