"""``lungseg --help`` and ``lungseg infer`` load only what they use: no Ignite, TensorBoard or trainer.

Each check runs a fresh interpreter and lists the modules it ended with. Ignite and TensorBoard come
with the ``train`` extra; the ``lungseg infer`` checks run as in a core install, where they are not
installed (a finder refuses them), and prove that nothing on the inference path needs them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import REPO_ROOT, SAMPLE_DATA
from PIL import Image

TRAINING_MODULES = ("ignite", "tensorboard", "torch.utils.tensorboard", "mlflow", "lungseg_monai.engine")
PNG = SAMPLE_DATA / "images" / "1052b0fe.png"

# A core install: the training extra's modules cannot be imported (as if not installed).
_CORE_INSTALL = """
import importlib.abc, sys
class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ignite", "tensorboard", "tensorboardX", "mlflow") or name.startswith("torch.utils.tensorboard"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _NotInstalled())
"""
# Runs `lungseg ARGS` as the console script does, then prints the loaded modules.
_RUN_CLI = """
import json, runpy, sys
sys.argv = ["lungseg", *json.loads(sys.argv[1])]
try:
    runpy.run_module("lungseg_monai.cli", run_name="__main__")
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "modules": sorted(k for k, v in sys.modules.items() if v is not None)}))
"""


def _modules_after(code: str, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _loaded(modules: list[str], name: str) -> bool:
    return any(m == name or m.startswith(name + ".") for m in modules)


def test_help_imports_neither_torch_nor_monai_nor_training_modules() -> None:
    result = _modules_after(_RUN_CLI, json.dumps(["--help"]))
    assert result["code"] == 0
    assert [m for m in ("torch", "monai", *TRAINING_MODULES) if _loaded(result["modules"], m)] == []


def test_infer_on_a_png_writes_its_mask_without_training_modules(segmenting_bundle: Path, tmp_path: Path) -> None:
    args = ["infer", str(PNG), "-o", str(tmp_path), "--model", str(segmenting_bundle / "models" / "model.pt"),
            "--device", "cpu", "--no-progress"]  # fmt: skip
    result = _modules_after(_CORE_INSTALL + _RUN_CLI, json.dumps(args))
    assert result["code"] == 0
    assert [m for m in TRAINING_MODULES if _loaded(result["modules"], m)] == []
    assert _loaded(result["modules"], "monai")  # the check is not vacuous: inference did run MONAI
    mask = np.asarray(Image.open(tmp_path / "masks" / f"{PNG.stem}.png"))
    assert mask.shape == np.asarray(Image.open(PNG)).shape[:2] and set(np.unique(mask)) <= {0, 255}


def test_importing_the_runner_does_not_import_our_training_stack() -> None:
    # With the train extra installed, `import monai` itself loads Ignite and TensorBoard (optional imports
    # in monai.engines and monai.handlers); our own training code must still stay out:
    code = "import json, sys; import lungseg_monai.inference.runner; print(json.dumps({'modules': sorted(sys.modules)}))"
    modules = _modules_after(code)["modules"]
    assert not _loaded(modules, "lungseg_monai.engine")
    assert not _loaded(modules, "lungseg_monai.label")


def test_our_inference_modules_import_in_a_core_install() -> None:
    code = _CORE_INSTALL + (
        "import json, sys\n"
        "import lungseg_monai.inference.runner, lungseg_monai.inference.cluster, lungseg_monai.io.checkpoint\n"
        "from lungseg_monai.inference import LungSegmenter\n"
        "LungSegmenter.from_model('vgg16', 'cpu')\n"
        "print(json.dumps({'modules': sorted(k for k, v in sys.modules.items() if v is not None)}))"
    )
    modules = _modules_after(code)["modules"]
    assert [m for m in TRAINING_MODULES if _loaded(modules, m)] == []
    assert _loaded(modules, "monai.networks")  # MONAI did load, without its training dependencies


def test_bundle_training_without_the_train_extra_names_the_extra(tmp_path: Path) -> None:
    """In a core install the bundle's training stops first thing, naming the extra (not Ignite's bare ImportError
    from a MONAI handler), and writes nothing."""
    from conftest import BUNDLE_DIR

    code = _CORE_INSTALL + f"""
from monai.bundle import run
run("training", config_file={str(BUNDLE_DIR / "configs" / "train.json")!r}, bundle_root={str(tmp_path)!r},
    dataset_dir={str(SAMPLE_DATA)!r})
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "ImportError: training through the bundle: this needs the 'train' extra" in proc.stderr, proc.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []


def test_training_code_without_the_train_extra_names_the_extra() -> None:
    """In a core install the bundle's training handlers say which extra to install, not Ignite's bare ImportError."""
    code = _CORE_INSTALL + """
try:
    import lungseg_monai.engine
except ImportError as e:
    print(e)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "needs the 'train' extra (ignite, tensorboard not installed)" in proc.stdout
    assert "pip install 'lungseg_monai[train]'" in proc.stdout
