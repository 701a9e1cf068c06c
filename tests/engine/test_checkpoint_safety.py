"""Checkpoints: safe loading only, refusal of pickled code and of the other backbone, atomic writes."""

from __future__ import annotations

import ast
import json
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose, RandAdjustContrastd, RandAffined, ScaleIntensityd

import lungseg_monai
from lungseg_monai.engine import CheckpointError, TransformRandomState, load_checkpoint, load_network_weights
from lungseg_monai.engine import checkpoint as checkpoint_module
from lungseg_monai.engine.checkpoint import save_checkpoint
from lungseg_monai.inference import LungSegmenter
from lungseg_monai.networks import LungUNet
from lungseg_monai.outputs import atomic_path

PACKAGE_DIR = Path(lungseg_monai.__file__).parent
SMALL_DECODER = [16, 16, 8, 8, 4]


class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


class _CustomObject:
    pass


def _calls(tree: ast.AST, module: str, function: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == function
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == module
    ]


@pytest.fixture(scope="module")
def networks() -> dict[str, LungUNet]:
    return {name: LungUNet(backbone=name, decoder_channels=SMALL_DECODER) for name in ("resnet50", "vgg16")}


def test_every_torch_load_in_the_package_is_weights_only() -> None:
    found = 0
    for source in PACKAGE_DIR.rglob("*.py"):
        tree = ast.parse(source.read_text())
        for call in _calls(tree, "torch", "load"):
            found += 1
            flags = {kw.arg: kw.value for kw in call.keywords}
            value = flags.get("weights_only")
            assert isinstance(value, ast.Constant) and value.value is True, f"{source}:{call.lineno}"
        assert not _calls(tree, "pickle", "load") and not _calls(tree, "pickle", "loads"), source
    assert found >= 2  # checkpoint loading and ImageNet weights loading


def test_checkpoint_with_pickled_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    torch.save({"network": {"w": torch.ones(2)}, "payload": _RunsCode(marker)}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "model.pt")
    assert not marker.exists()
    message = str(info.value)
    assert message.startswith(
        f"checkpoint '{tmp_path / 'model.pt'}' contains pickled Python code or objects (it refers to "
    )
    assert "system)" in message and "could run arbitrary code" in message


def test_checkpoint_with_a_pickled_object_is_refused_naming_its_class(
    tmp_path: Path, networks: dict[str, LungUNet]
) -> None:
    torch.save({"w": torch.ones(2), "extra": _CustomObject()}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"it refers to \S*test_checkpoint_safety\._CustomObject"):
        load_network_weights(networks["vgg16"], tmp_path / "model.pt")


def test_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    save_checkpoint({"w": torch.ones(1000)}, tmp_path / "model.pt")
    data = (tmp_path / "model.pt").read_bytes()
    (tmp_path / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.pt' cannot be read \(RuntimeError: PytorchStreamReader"):
        load_checkpoint(tmp_path / "model.pt")


@pytest.mark.parametrize(("saved", "target"), [("vgg16", "resnet50"), ("resnet50", "vgg16")])
def test_checkpoint_of_the_other_backbone_names_both(
    tmp_path: Path, networks: dict[str, LungUNet], saved: str, target: str
) -> None:
    save_checkpoint(networks[saved].state_dict(), tmp_path / "model.pt")
    with pytest.raises(CheckpointError) as info:
        load_network_weights(networks[target], tmp_path / "model.pt")
    assert str(info.value) == (
        f"checkpoint '{tmp_path / 'model.pt'}' holds a {saved} LungUNet but the network is a {target} LungUNet; "
        f"set backbone to '{saved}' or pass a {target} checkpoint"
    )


def test_segmenter_refuses_weights_whose_card_names_the_other_backbone(
    tmp_path: Path, networks: dict[str, LungUNet]
) -> None:
    save_checkpoint(networks["vgg16"].state_dict(), tmp_path / "model.pt")
    card = {"backbone": "resnet50", "image_size": 64, "decoder_channels": SMALL_DECODER}
    (tmp_path / "model.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="holds a vgg16 LungUNet but the network is a resnet50 LungUNet"):
        LungSegmenter.from_model(tmp_path / "model.pt", device="cpu")


def test_failed_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save dies half way: the old model.pt is untouched and no temporary file is left."""
    target = tmp_path / "model.pt"
    save_checkpoint({"w": torch.zeros(1000)}, target)
    real_save = torch.save

    def dying_save(obj: object, f: object) -> None:
        real_save(obj, f)
        f.truncate(100)  # type: ignore[union-attr]
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint({"w": torch.ones(1000)}, target)
    assert torch.equal(load_checkpoint(target)["w"], torch.zeros(1000))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_sigkill_during_saves_never_leaves_a_corrupt_checkpoint(tmp_path: Path) -> None:
    """A child saves two alternating 8 MB checkpoints in a loop and is SIGKILLed at varied moments.

    After every kill, model.pt loads and is exactly one of the two versions; the leftover
    temporary files prove that some kills landed in the middle of a write.
    """
    target = tmp_path / "model.pt"
    versions = [{"w": torch.full((2_000_000,), float(v))} for v in (1, 2)]
    interrupted_writes = 0
    for attempt in range(6):
        pid = os.fork()
        if pid == 0:
            try:
                for i in range(10_000):
                    save_checkpoint(versions[i % 2], target)
            finally:
                os._exit(0)
        deadline = time.monotonic() + 60
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05 + 0.037 * attempt)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        loaded = load_checkpoint(target)["w"]
        assert any(torch.equal(loaded, v["w"]) for v in versions)
        leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".model.pt.")]
        interrupted_writes += len(leftovers)
        for p in leftovers:
            p.unlink()
    assert interrupted_writes >= 1


def test_atomic_outputs_get_the_umask_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "report.csv") as tmp:
            tmp.write_text("name,dice\n")
    finally:
        os.umask(old)
    assert (tmp_path / "report.csv").stat().st_mode & 0o777 == 0o644


def _augmentation() -> Compose:
    return Compose(
        [
            ScaleIntensityd("image"),
            RandAffined("image", prob=1.0, rotate_range=0.3, scale_range=0.1, padding_mode="border"),
            RandAdjustContrastd("image", prob=1.0, gamma=(0.7, 1.5)),
        ]
    )


def test_transform_random_state_continues_the_augmentation_sequence() -> None:
    """Restoring the saved states into a freshly seeded chain replays exactly what came next."""
    data = {"image": torch.rand(1, 32, 32)}
    original = _augmentation().set_random_state(seed=3)
    original(data)  # epoch 1
    saved = TransformRandomState(original).state_dict()
    expected = original(data)["image"]  # what epoch 2 gives

    resumed = _augmentation().set_random_state(seed=3)  # a restarted process: generators start over
    assert not torch.allclose(resumed(dict(data))["image"], expected)
    resumed = _augmentation().set_random_state(seed=3)
    TransformRandomState(resumed).load_state_dict(saved)
    torch.testing.assert_close(resumed(data)["image"], expected, rtol=0, atol=0)
    assert {"transforms.1.rand_affine.rand_affine_grid", "transforms.2"} <= set(saved)


def test_transform_random_state_refuses_another_chain() -> None:
    saved = TransformRandomState(_augmentation()).state_dict()
    with pytest.raises(CheckpointError, match="resume with the transforms the run started with"):
        TransformRandomState(Compose([ScaleIntensityd("image")])).load_state_dict(saved)


def test_global_random_states_round_trip_through_a_safe_checkpoint(tmp_path: Path) -> None:
    np.random.normal()  # leaves a cached Gaussian in numpy's state
    random.gauss(0, 1)
    save_checkpoint({"rng": checkpoint_module._rng_state()}, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.normal(size=3), random.gauss(0, 1), random.random())
    checkpoint_module._set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    again = (torch.rand(3), np.random.normal(size=3), random.gauss(0, 1), random.random())
    assert torch.equal(again[0], expected[0])
    np.testing.assert_array_equal(again[1], expected[1])
    assert again[2:] == expected[2:]


def _lr_per_epoch(tmp_path: Path, max_epochs: int, resume: bool) -> list[float]:
    """Learning rate of each epoch of a toy run with the bundle's warm-up + cosine, stepped per epoch."""
    from ignite.engine import Engine, Events
    from monai.optimizers import WarmupCosineSchedule

    from lungseg_monai.engine import TrainingCheckpoint

    net = torch.nn.Linear(1, 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    schedule = WarmupCosineSchedule(optimizer, warmup_steps=1, t_total=max_epochs, warmup_multiplier=0.1, end_lr=1e-5)
    trainer = Engine(lambda engine, batch: optimizer.step())
    lrs: list[float] = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda _: lrs.append(optimizer.param_groups[0]["lr"]))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: schedule.step())
    save_dict = {"network": net, "optimizer": optimizer, "lr_scheduler": schedule}
    TrainingCheckpoint(tmp_path / "last.pt", save_dict, resume=resume).attach(trainer)
    trainer.run([0], max_epochs=max_epochs)
    return lrs


def test_resume_with_more_epochs_stretches_the_schedule_instead_of_restarting_the_cosine(tmp_path: Path) -> None:
    _lr_per_epoch(tmp_path / "resumed", max_epochs=4, resume=False)
    resumed = _lr_per_epoch(tmp_path / "resumed", max_epochs=8, resume=True)
    reference = _lr_per_epoch(tmp_path / "reference", max_epochs=8, resume=False)
    assert len(resumed) == 4  # epochs 5..8
    # The epoch reached is kept; from there the run follows the 8-epoch cosine, still decreasing.
    np.testing.assert_allclose(resumed, reference[4:], rtol=1e-9)
    assert resumed == sorted(resumed, reverse=True)
