"""Interrupted training: SIGKILL a real bundle training mid-epoch, resume it, compare with a clean run.

Three small CPU trainings (VGG16, 64 px, 8 embedded sample pairs, 2 epochs of 2 iterations):
an uninterrupted reference, a run killed with SIGKILL while its second epoch is under way, and
that run resumed with ``--resume true``. The resumed run must end in the reference's state.

Tolerance: the resume restores every random generator the run uses (torch, numpy, Python, and
each augmentation transform's own generator), so on CPU the same thread count gives bit-identical
results; the comparison still allows 1e-6 (weights, metrics) because oneDNN may pick a different
convolution kernel when the buffers land at a different memory alignment in a new process, which
changes float summation order in the last bits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lungseg_monai.engine import load_checkpoint

from conftest import REPO_ROOT, SAMPLE_DATA, TRAIN_CONFIG, run_bundle

N_PAIRS = 8
TOLERANCE = 1e-6
CHECKPOINT_TIMEOUT_S = 600


def tiny_datalist(folder: Path, n_pairs: int = N_PAIRS) -> Path:
    """A JSON datalist of the first ``n_pairs`` embedded sample pairs (real images and masks)."""
    names = sorted(p.name for p in (SAMPLE_DATA / "images").iterdir())[:n_pairs]
    items = [{"image": str(SAMPLE_DATA / "images" / n), "label": str(SAMPLE_DATA / "masks" / n)} for n in names]
    path = folder / "datalist.json"
    path.write_text(json.dumps(items))
    return path


def cpu_env() -> dict[str, str]:
    """One thread, no GPU: the conditions under which two runs must agree bit for bit."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO_ROOT)}


def training_args(bundle_root: Path, datalist: Path, *extra: str) -> list[str]:
    return [
        "run", "training",
        "--config_file", str(TRAIN_CONFIG),
        "--bundle_root", str(bundle_root),
        "--dataset_dir", str(datalist),
        "--backbone", "vgg16",
        "--image_size", "64",
        "--max_epochs", "2",
        "--batch_size", "2",
        "--seed", "7",
        *extra,
    ]  # fmt: skip


def train_and_kill_mid_epoch(bundle_root: Path, datalist: Path) -> int:
    """Start training, SIGKILL it once the epoch-1 checkpoint exists; returns the checkpoint's epoch."""
    checkpoint = bundle_root / "models" / "checkpoint_last.pt"
    log = bundle_root.parent / f"{bundle_root.name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "monai.bundle", *training_args(bundle_root, datalist)],
            cwd=REPO_ROOT, env=cpu_env(), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + CHECKPOINT_TIMEOUT_S
            while not checkpoint.exists():
                if proc.poll() is not None:
                    pytest.fail(
                        f"training exited ({proc.returncode}) before its first checkpoint:\n{log.read_text()[-3000:]}"
                    )
                if time.monotonic() > deadline:
                    pytest.fail("no epoch checkpoint within the time limit")
                time.sleep(0.02)
            time.sleep(0.3)  # well inside epoch 2, which takes seconds
            assert proc.poll() is None, "training ended before it could be killed mid-run"
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return saved_epoch(load_checkpoint(checkpoint))


def saved_epoch(state: dict) -> int:
    """Ignite saves the iteration count; the epoch is whole epochs of it (saving happens at epoch end)."""
    return int(state["trainer"]["iteration"]) // int(state["trainer"]["epoch_length"])


def assert_states_close(resumed: object, reference: object, where: str) -> None:
    """Nested dicts/lists of tensors and numbers are equal within TOLERANCE."""
    if isinstance(reference, dict):
        assert isinstance(resumed, dict) and set(resumed) == set(reference), where
        for key in reference:
            assert_states_close(resumed[key], reference[key], f"{where}.{key}")
    elif isinstance(reference, (list, tuple)):
        assert isinstance(resumed, (list, tuple)) and len(resumed) == len(reference), where
        for i, (a, b) in enumerate(zip(resumed, reference)):
            assert_states_close(a, b, f"{where}[{i}]")
    elif isinstance(reference, torch.Tensor):
        assert resumed.shape == reference.shape, where
        if reference.is_floating_point():
            torch.testing.assert_close(resumed, reference, atol=TOLERANCE, rtol=0, msg=where)
        else:
            assert torch.equal(resumed, reference), where
    elif isinstance(reference, float):
        assert resumed == pytest.approx(reference, abs=TOLERANCE), where
    else:
        assert resumed == reference, where


@pytest.mark.timeout(1500)
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    datalist = tiny_datalist(tmp_path)
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"

    epoch_at_kill = train_and_kill_mid_epoch(interrupted, datalist)
    assert epoch_at_kill == 1  # killed during epoch 2: only epoch 1 was saved
    assert load_checkpoint(interrupted / "models" / "model.pt")  # the best model survived the kill intact

    resumed = run_bundle(*training_args(interrupted, datalist, "--resume", "true"), env=cpu_env())
    assert (
        f"resumed from '{interrupted / 'models' / 'checkpoint_last.pt'}' at epoch 1" in resumed.stdout + resumed.stderr
    )

    run_bundle(*training_args(reference, datalist), env=cpu_env())

    ref_state = load_checkpoint(reference / "models" / "checkpoint_last.pt")
    res_state = load_checkpoint(interrupted / "models" / "checkpoint_last.pt")
    assert saved_epoch(res_state) == saved_epoch(ref_state) == 2
    assert res_state["trainer"]["iteration"] == ref_state["trainer"]["iteration"] == 4
    # Adam's step counts every iteration of both epochs, so the optimizer state was carried over.
    assert all(int(s["step"]) == 4 for s in res_state["optimizer"]["state"].values())
    assert res_state["lr_scheduler"]["last_epoch"] == 2
    # The augmentation generators continued their sequence instead of restarting it.
    assert res_state["augmentation"] and all(
        torch.equal(res_state["augmentation"][k]["keys"], ref_state["augmentation"][k]["keys"])
        for k in ref_state["augmentation"]
    )
    assert_states_close(res_state, ref_state, "checkpoint_last")

    ref_card = json.loads((reference / "models" / "model.json").read_text())
    res_card = json.loads((interrupted / "models" / "model.json").read_text())
    assert res_card["epoch"] == ref_card["epoch"]
    assert res_card["val_mean_dice"] == pytest.approx(ref_card["val_mean_dice"], abs=TOLERANCE)
