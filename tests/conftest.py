"""Shared test fixtures: the real data in ../shared/data, the embedded sample, a small trained bundle.

Tests that need ../shared skip with a reason on a user's clone, and fail instead of skipping when
``CI=true`` (CI always has ../shared beside the checkout).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_DIR = REPO_ROOT / "bundles" / "lung_cxr_segmentation"
CONFIG_DIR = BUNDLE_DIR / "configs"
TRAIN_CONFIG = CONFIG_DIR / "train.json"
EVALUATE_CONFIG = CONFIG_DIR / "evaluate.json"
INFERENCE_CONFIG = CONFIG_DIR / "inference.json"
METADATA = CONFIG_DIR / "metadata.json"
SAMPLE_DATA = BUNDLE_DIR / "sample_data"
SHARED_DATA = Path(os.environ.get("LUNGSEG_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
SHARED_CXR = SHARED_DATA / "cxr_lung"
# The two real chest DICOM files also ship with the sample data (byte-identical copies).
SAMPLE_DICOM = SAMPLE_DATA / "dicom"
DICOM_J2K_MONO1 = SAMPLE_DICOM / "RG1_J2KI.dcm"
DICOM_JPEG_SIIM = SAMPLE_DICOM / "siim_chest_pa.dcm"
DICOM_FAKE_MONO1 = REPO_ROOT / "tests" / "data" / "Fake_MONOHR1.dcm"  # see tests/data/README.md

IN_CI = os.environ.get("CI", "").lower() == "true"

# Keep the 2-core machine usable while tests run networks.
os.environ.setdefault("LUNGSEG_OFFLINE", "1")


def require_shared() -> Path:
    """Skip (or fail under CI=true) when ../shared/data is not beside the checkout."""
    if not SHARED_DATA.is_dir():
        if IN_CI:
            pytest.fail(f"CI=true but the shared data folder '{SHARED_DATA}' is missing")
        pytest.skip(f"needs the developers' shared data at '{SHARED_DATA}' (not part of a user's clone)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return require_shared()


def run_bundle(
    *args: str, cwd: Path = REPO_ROOT, timeout: int = 900, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle ARGS`` in a subprocess; fail the test with its output on error."""
    cmd = [sys.executable, "-m", "monai.bundle", *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def config_list(*configs: Path) -> str:
    return "[" + ",".join(f"'{c}'" for c in configs) + "]"


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle_root holding a ResNet50 model trained 2 epochs at 64 px on the embedded sample data.

    Its Dice is poor; it exists to exercise evaluation, inference, export and serving end to end.
    """
    root = tmp_path_factory.mktemp("trained_bundle")
    run_bundle(
        "run", "training",
        "--config_file", str(TRAIN_CONFIG),
        "--bundle_root", str(root),
        "--dataset_dir", str(SAMPLE_DATA),
        "--image_size", "64",
        "--max_epochs", "2",
        "--batch_size", "6",
        "--qc_min_validation", "4",  # the sample's 9 validation films: enough to exercise QC, not to trust it
    )  # fmt: skip
    assert (root / "models" / "model.pt").is_file()
    return root


@pytest.fixture(scope="session")
def segmenting_bundle(trained_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``trained_bundle``'s model, with the model card's threshold moved to where its masks are not empty.

    After 2 epochs at 64 px every lung probability is about 0.47, under the usual 0.5, so every mask
    would be empty and comparisons between inference routes would prove nothing. The threshold
    becomes the median probability on an embedded sample image: about half of each image is then
    lung, with many pixels close to the threshold (a hard case for exact agreement).
    """
    from lungseg_monai.inference import LungSegmenter
    from lungseg_monai.io import read_radiograph

    root = tmp_path_factory.mktemp("segmenting_bundle")
    (root / "models").mkdir()
    shutil.copy(trained_bundle / "models" / "model.pt", root / "models" / "model.pt")
    card_path = root / "models" / "model.json"
    shutil.copy(trained_bundle / "models" / "model.json", card_path)
    segmenter = LungSegmenter.from_model(card_path.with_suffix(".pt"), device="cpu")
    probability = segmenter.predict_probabilities([read_radiograph(SAMPLE_DATA / "images" / "1052b0fe.png")])[0]
    card = json.loads(card_path.read_text())
    card["threshold"] = float(np.median(probability))
    card_path.write_text(json.dumps(card, indent=2))
    return root
