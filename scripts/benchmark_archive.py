"""Archive benchmark: ``lungseg infer`` over a folder of films, in one process and on a local Ray cluster.

Prints a Markdown section (``--report`` appends it to BENCHMARKS.md) with, for the same films and the
same model (default: the shipped vgg16) and the default outputs (mask, overlay, measurements):

1. **Per-film profile** (in this process, one film at a time, on the first ``--profile`` films): decoding
   and preparing, the network alone, what QC adds to the network (the agreement check), QC's arithmetic
   (features and verdict), the mask and the writes; and the model's start-up, which a Ray actor pays once.
2. **Single process**: ``lungseg infer FOLDER -o OUT`` as a subprocess, with QC (the model as shipped)
   and without (an uncalibrated copy of the same weights): wall time, films/s, CPU-seconds per film and
   peak memory. Their difference is what QC costs a film end to end.
3. **Local Ray cluster**: ``lungseg infer FOLDER -o OUT --ray`` with one actor per ``--cpus-per-actor``
   CPUs: wall time (Ray start-up included), films/s, CPU-seconds per film (driver and workers) and the
   peak memory of one worker.
4. **Projection** to 10^6 films on N CPU nodes like this one (throughput per core of the Ray run).

Usage (from the repository root, nothing else running)::

    python scripts/benchmark_archive.py --films ../shared/data/cxr_unlabelled/images --report BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_quality import hardware_description, load_average  # noqa: E402

from lungseg_monai.inference import LungSegmenter
from lungseg_monai.inference.discovery import discover_inputs
from lungseg_monai.io import read_radiograph
from lungseg_monai.outputs import save_overlay, save_png
from lungseg_monai.outputs.measurements import measure_radiograph
from lungseg_monai.pretrained import resolve_model

FILMS_PER_MILLION = 1_000_000


def _peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident memory) of a running process, MiB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _actor_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"FilmWorker" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def run_infer(films: Path, out: Path, model: str, extra: Sequence[str] = ()) -> dict[str, float]:
    """``lungseg infer`` as a subprocess: wall s, CPU s of it and its children, peak memory (MiB) of the driver
    and of the largest Ray actor seen (sampled every 0.5 s)."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "lungseg_monai.cli", "infer", str(films), "-o", str(out), "--model", model]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen([*command, "--no-progress", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks = {"driver": 0.0, "actor": 0.0, "actor_cpu_s": {}}

    def sample() -> None:
        while process.poll() is None:
            peaks["driver"] = max(peaks["driver"], _peak_rss_mib(process.pid))
            for pid in _actor_pids():
                peaks["actor"] = max(peaks["actor"], _peak_rss_mib(pid))
                try:  # utime + stime of the actor (it is not our child: RUSAGE_CHILDREN misses it)
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    peaks["actor_cpu_s"][pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
                except (OSError, IndexError, ValueError):
                    pass
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = process.communicate()
    wall = time.perf_counter() - started
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode not in (0, 3):
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}): {stderr.decode()[-3000:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime + sum(peaks["actor_cpu_s"].values())
    summary = next((line for line in stderr.decode().splitlines() if "quality control: " in line), "")
    return {"wall_s": wall, "cpu_s": cpu, "driver_mib": peaks["driver"], "actor_mib": peaks["actor"], "summary": summary}


def uncalibrated_copy(model: str, folder: Path) -> str:
    """The same weights with their card minus the QC calibration: ``lungseg infer`` then runs no QC pass."""
    source = resolve_model(model)
    target = folder / "model.pt"
    shutil.copyfile(source, target)
    card = json.loads(source.with_suffix(".json").read_text())
    card.pop("qc", None)
    target.with_suffix(".json").write_text(json.dumps(card))
    return str(target)


def profile(films: list[Path], model: str, folder: Path) -> dict[str, float]:
    """Mean seconds per film of each step, one film at a time in this process (bf16 as ``lungseg infer`` runs)."""
    started = time.perf_counter()
    segmenter = LungSegmenter.from_model(model, "cpu")
    segmenter.forward_qc(torch.zeros(1, 1, int(segmenter.card["image_size"]), int(segmenter.card["image_size"])))
    startup = time.perf_counter() - started
    steps: dict[str, list[float]] = {k: [] for k in ("decode", "network", "qc_network", "qc_verdict", "mask_write")}
    for path in films:
        t0 = time.perf_counter()
        radiograph = read_radiograph(path)
        batch = segmenter.prepare(radiograph)[None]
        t1 = time.perf_counter()
        segmenter.forward(batch)
        t2 = time.perf_counter()
        out = segmenter.forward_qc(batch)
        t3 = time.perf_counter()
        verdict = segmenter.assess(out)
        t4 = time.perf_counter()
        mask = segmenter.to_mask(out.probabilities[0], radiograph.shape)
        save_png(mask * 255, folder / "mask.png")
        save_overlay(radiograph.pixels, mask, folder / "overlay.png")
        measure_radiograph(mask, radiograph, path.stem).update(verdict.as_row())
        t5 = time.perf_counter()
        steps["decode"].append(t1 - t0)
        steps["network"].append(t2 - t1)
        steps["qc_network"].append((t3 - t2) - (t2 - t1))  # forward_qc minus the plain pass
        steps["qc_verdict"].append(t4 - t3)
        steps["mask_write"].append(t5 - t4)
    result = {k: float(np.mean(v)) for k, v in steps.items()}
    result["startup_s"] = startup
    result["films"] = len(films)
    return result


def report(args: argparse.Namespace, n_films: int, prof: dict, single: dict, bare: dict, ray: dict) -> str:
    cores = len(os.sched_getaffinity(0))

    def rate(r: dict) -> float:
        return n_films / r["wall_s"]

    qc_share = single["wall_s"] / bare["wall_s"] - 1
    per_core = rate(ray) / cores
    lines = [
        f"## Archive benchmark ({dt.date.today().isoformat()})",
        "",
        f"`python scripts/benchmark_archive.py --films {args.films} --model {args.model} "
        f"--cpus-per-actor {args.cpus_per_actor}`; {hardware_description()}; torch threads {torch.get_num_threads()}; "
        f"load before {args.load_before}, after {load_average()}; {n_films} films, default outputs (mask, overlay, "
        "measurements), bf16 on CPU.",
        "",
        f"Per-film profile (one film at a time, first {prof['films']} films, ms per film): decode and prepare "
        f"{1000 * prof['decode']:.1f}, network {1000 * prof['network']:.1f}, QC's agreement check "
        f"{1000 * prof['qc_network']:.1f} ({100 * prof['qc_network'] / prof['network']:.0f} % of the network), QC "
        f"features and verdict {1000 * prof['qc_verdict']:.1f}, mask, overlay, measurements and writes "
        f"{1000 * prof['mask_write']:.1f}; model start-up (once per process or actor) {prof['startup_s']:.1f} s.",
        "",
        "| Run | Wall | Films/s | CPU-s per film | Peak memory |",
        "|---|---|---|---|---|",
        f"| single process, QC on (`lungseg infer`) | {single['wall_s']:.1f} s | {rate(single):.2f} | "
        f"{single['cpu_s'] / n_films:.3f} | {single['driver_mib']:.0f} MiB |",
        f"| single process, uncalibrated copy (no QC) | {bare['wall_s']:.1f} s | {rate(bare):.2f} | "
        f"{bare['cpu_s'] / n_films:.3f} | {bare['driver_mib']:.0f} MiB |",
        f"| local Ray, {ray['actors']} actor(s) x {args.cpus_per_actor} CPU (`--ray`) | {ray['wall_s']:.1f} s | "
        f"{rate(ray):.2f} | {ray['cpu_s'] / n_films:.3f} | driver {ray['driver_mib']:.0f} MiB, worker "
        f"{ray['actor_mib']:.0f} MiB |",
        "",
        f"QC adds **{100 * qc_share:.0f} %** to a film's cost end to end ({single['wall_s']:.1f} s vs "
        f"{bare['wall_s']:.1f} s). Verdicts of the single-process run: {single['summary'].split('quality control: ', 1)[-1]}.",
        "",
        f"Projection from the Ray run ({per_core:.2f} films/s per core, start-up included): 10^6 films take "
        + ", ".join(
            f"{FILMS_PER_MILLION / (per_core * cores * nodes) / 3600:.1f} h on {nodes} node(s) of {cores} cores"
            for nodes in (1, 10, 50)
        )
        + " (linear in nodes while the shared file system keeps up).",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--films", type=Path, required=True, help="a folder of films")
    parser.add_argument("--model", default="vgg16", help="a shipped model's name or a model file (default vgg16)")
    parser.add_argument("--profile", type=int, default=200, help="films in the per-film profile (default 200)")
    parser.add_argument("--cpus-per-actor", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--report", type=Path, default=None, help="append the section to this Markdown file")
    args = parser.parse_args(argv)
    args.load_before = load_average()
    work = args.work or Path(tempfile.mkdtemp(prefix="lungseg-archive-"))
    work.mkdir(parents=True, exist_ok=True)
    found = discover_inputs([args.films])
    n_films = len(found.inputs) + len(found.failed)
    prof = profile([item.path for item in found.inputs[: args.profile]], args.model, work)
    print(json.dumps(prof), flush=True)
    single = run_infer(args.films, work / "single", args.model)
    print("single", json.dumps(single), flush=True)
    bare = run_infer(args.films, work / "bare", uncalibrated_copy(args.model, work))
    print("no QC", json.dumps(bare), flush=True)
    ray = run_infer(args.films, work / "ray", args.model, ["--ray", "--cpus-per-actor", str(args.cpus_per_actor)])
    ray["actors"] = max(1, len(os.sched_getaffinity(0)) // args.cpus_per_actor)
    print("ray", json.dumps(ray), flush=True)
    section = report(args, n_films, prof, single, bare, ray)
    print(section)
    if args.report:
        with open(args.report, "a") as f:
            f.write("\n" + section)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
