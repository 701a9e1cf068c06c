"""Multi-process training, resume and evaluation with the bundle's multi-GPU configs, on CPU (gloo).

Two processes launched by torchrun train on the embedded sample data; the results are checked
against a single-process run of the same checkpoint on the same data. Also fast unit tests of the
sharding, gathering and resume-consistency helpers.
"""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser

from conftest import CONFIG_DIR, EVALUATE_CONFIG, REPO_ROOT, SAMPLE_DATA, TRAIN_CONFIG, config_list
from lungseg_monai.engine import (
    CheckpointError,
    TrainingCheckpoint,
    distributed_sampler,
    gather_objects,
    load_checkpoint,
    load_network_weights,
    save_checkpoint,
)
from lungseg_monai.engine import checkpoint as checkpoint_module
from lungseg_monai.networks import LungUNet

MULTI_TRAIN_CONFIG = CONFIG_DIR / "multi_gpu_train.json"
MULTI_EVALUATE_CONFIG = CONFIG_DIR / "multi_gpu_evaluate.json"
N_PROCESSES = 2
BATCH_SIZE = 3
# A rate without warm-up at which two tiny epochs give a model that predicts some lung, so that
# the Dice comparisons below compare something other than zeros. Measured (2 processes, 64 px):
# lr 0.003 gives validation Dice 0.70 after epoch 2 in fp32 and in bf16; lr 0.01 gave 0.07 in fp32
# and 0.00 in bf16 (train-mode Dice 0.77-0.79 both: BatchNorm running statistics still lagging).
SMALL_RUN = {
    "--dataset_dir": str(SAMPLE_DATA),
    "--image_size": "64",
    "--batch_size": str(BATCH_SIZE),
    "--learning_rate": "0.003",
    "--warmup_epochs": "0",
}
RUN_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun_bundle(*args: str, **overrides: str) -> str:
    """``torchrun --nproc_per_node=2 -m monai.bundle ARGS --key value...``; returns its output."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc_per_node={N_PROCESSES}", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
        "-m", "monai.bundle", *args,
    ]  # fmt: skip
    for key, value in {**SMALL_RUN, **overrides}.items():
        cmd += [key if key.startswith("--") else f"--{key}", value]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=RUN_TIMEOUT_S
    )
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-6000:]}")
    return proc.stdout


def single_process_parser(root: Path, *configs: Path) -> ConfigParser:
    """The bundle config as a single CPU process sees it, writing nothing (``is_rank0`` false)."""
    parser = ConfigParser()
    parser.read_config([str(c) for c in configs])
    parser.update(
        {
            "bundle_root": str(root),
            "dataset_dir": str(SAMPLE_DATA),
            "image_size": 64,
            "device": "$torch.device('cpu')",
            "is_rank0": False,
        }
    )
    return parser


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A bundle_root trained for 2 epochs by 2 processes, and the run's output."""
    root = tmp_path_factory.mktemp("ddp_bundle")
    output = torchrun_bundle(
        "run", "training",
        "--config_file", config_list(TRAIN_CONFIG, MULTI_TRAIN_CONFIG),
        bundle_root=str(root), max_epochs="2",
    )  # fmt: skip
    return root, output


def test_two_process_training_writes_one_checkpoint_that_loads_in_a_single_process(ddp_run: tuple[Path, str]) -> None:
    root, _ = ddp_run
    card = json.loads((root / "models" / "model.json").read_text())
    network = LungUNet(backbone=card["backbone"], decoder_channels=card["decoder_channels"])
    load_network_weights(network, root / "models" / "model.pt")  # a DDP "module." prefix would fail here
    with torch.no_grad():
        assert network.eval()(torch.zeros(1, 1, 64, 64)).shape == (1, 1, 64, 64)
    # TensorBoard files come from one process only (their names end in .<pid>.<n>)
    pids = {p.name.split(".")[-2] for p in (root / "logs").glob("events.out.tfevents.*")}
    assert len(pids) == 1, sorted(p.name for p in (root / "logs").iterdir())


def test_two_process_validation_dice_equals_single_process_evaluation(ddp_run: tuple[Path, str]) -> None:
    root, _ = ddp_run
    card = json.loads((root / "models" / "model.json").read_text())
    split = json.loads((root / "models" / "datalist_split.json").read_text())
    parser = single_process_parser(root, TRAIN_CONFIG)
    parser["validate#evaluator#amp"] = False
    evaluator = parser.get_parsed_content("validate#evaluator")
    load_network_weights(parser.get_parsed_content("network"), root / "models" / "model.pt")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process (OMP_NUM_THREADS=1): in bf16 the sums' order shows
    try:
        evaluator.run()
    finally:
        torch.set_num_threads(threads)
    single_dice = evaluator.state.metrics["val_mean_dice"]
    scores = evaluator.state.metric_details["val_mean_dice"]
    assert len(scores) == len(split["validation"]) == 9
    assert card["n_validation_images"] == len(split["validation"])  # none counted twice, none dropped
    assert single_dice > 0.0, "the model predicts no lung at all; the comparison would only compare zeros"
    assert card["val_mean_dice"] == pytest.approx(single_dice, abs=1e-4)


def test_two_process_evaluation_reports_every_test_image_once(ddp_run: tuple[Path, str]) -> None:
    root, _ = ddp_run
    output = torchrun_bundle(
        "run", "evaluating",
        "--config_file", config_list(TRAIN_CONFIG, EVALUATE_CONFIG, MULTI_EVALUATE_CONFIG),
        bundle_root=str(root),
    )  # fmt: skip
    eval_dir = root / "eval"
    with open(eval_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    split = json.loads((root / "models" / "datalist_split.json").read_text())
    assert [r["name"] for r in rows] == sorted(Path(item["image"]).name for item in split["test"])
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["n_images"] == len(split["test"]) == 9
    assert sorted(p.stem for p in (eval_dir / "worst").glob("*.png")) == sorted(
        Path(case["name"]).stem for case in summary["worst"]
    )
    # the Dice MONAI's MeanDice reduced across processes (logged by rank 0) is the mean of the gathered rows
    (logged,) = re.findall(r"Metrics -- test_mean_dice: ([0-9.]+)", output)
    assert float(logged) == pytest.approx(sum(float(r["dice"]) for r in rows) / len(rows), abs=1e-4)


def test_resumed_two_process_run_continues_from_epoch_2(ddp_run: tuple[Path, str]) -> None:
    root, _ = ddp_run
    checkpoint = root / "models" / "checkpoint_last.pt"
    before = load_checkpoint(checkpoint)["trainer"]
    assert before["iteration"] == 2 * before["epoch_length"]
    output = torchrun_bundle(
        "run", "training",
        "--config_file", config_list(TRAIN_CONFIG, MULTI_TRAIN_CONFIG),
        bundle_root=str(root), max_epochs="3", resume="true",
    )  # fmt: skip
    assert output.count(f"resumed from '{checkpoint}' at epoch 2") == N_PROCESSES  # every process resumed
    epochs_run = {int(e) for e in re.findall(r"Epoch: (\d+)/3, Iter", output)}
    assert epochs_run == {3}
    after = load_checkpoint(checkpoint)["trainer"]
    assert after["iteration"] == 3 * before["epoch_length"]


@pytest.mark.parametrize(
    "split, shuffle, even_divisible, lengths",
    [("validation", False, False, [5, 4]), ("training", True, True, [5, 5])],
    ids=["validation_uneven_no_repeat", "training_padded"],
)
def test_shards_of_nine_items_over_two_processes(
    split: str, shuffle: bool, even_divisible: bool, lengths: list[int]
) -> None:
    shards = [
        list(distributed_sampler(range(9), split, shuffle=shuffle, even_divisible=even_divisible, num_replicas=2, rank=r))
        for r in range(2)
    ]
    assert [len(s) for s in shards] == lengths
    assert set(shards[0] + shards[1]) == set(range(9))  # every item somewhere...
    if not even_divisible:
        assert sorted(shards[0] + shards[1]) == list(range(9))  # ...and, for validation, exactly once


def test_split_smaller_than_the_number_of_processes_is_refused() -> None:
    with pytest.raises(ValueError, match=r"the validation split has 2 items but the run has 3 processes"):
        distributed_sampler(range(2), "validation", shuffle=False, even_divisible=False, num_replicas=3, rank=0)


def test_gather_objects_outside_a_process_group_returns_the_object_alone() -> None:
    assert gather_objects({"a": 1}) == [{"a": 1}]


def test_resume_is_refused_when_only_some_processes_see_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoint_last.pt"
    save_checkpoint({"network": torch.nn.Linear(1, 1).state_dict()}, path)
    # as if process 1 ran on another node whose bundle_root lacks the file
    monkeypatch.setattr(checkpoint_module, "gather_objects", lambda found: [found, False])
    handler = TrainingCheckpoint(path, {"network": torch.nn.Linear(1, 1)}, resume=True)
    with pytest.raises(CheckpointError, match=r"exists for processes \[0\] and not for processes \[1\]"):
        handler.load(Engine(lambda engine, batch: None))
