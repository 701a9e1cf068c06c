"""Real-data quality benchmark: train each backbone through the bundle, evaluate on the test split.

For each backbone this runs, in subprocesses, exactly what a user would run::

    python -m monai.bundle run training \\
        --config_file "['train.json','cpu_recipe.json']" --dataset_dir DATA --backbone B --bundle_root DIR
    python -m monai.bundle run evaluating \\
        --config_file "['train.json','cpu_recipe.json','evaluate.json']" --dataset_dir DATA --backbone B --bundle_root DIR

(the configs passed by absolute path), with the bundle's 0.5/0.25/0.25 split. Evaluation runs the
network in eval mode on the test split and scores masks at each image's original resolution;
its ``eval/summary.json`` is read back and a section is appended to ``BENCHMARKS.md``: Dice
mean/median/min, IoU, HD95, ASSD, epochs run, wall time, hardware, date and the command.

Usage (from the repository root)::

    python scripts/benchmark_quality.py --backbone resnet50 --work_dir /tmp/bench_quality
    python scripts/benchmark_quality.py --backbone vgg16 --override image_size=128 --override max_epochs=20

``--quick`` trains 1 epoch at 64 px on the bundle's embedded sample data (a smoke test of this
script, not a benchmark); its section is written to ``--report`` only, so point that elsewhere.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "bundles" / "lung_cxr_segmentation" / "configs"
TRAIN_CONFIG = CONFIG_DIR / "train.json"
RECIPE_CONFIG = CONFIG_DIR / "cpu_recipe.json"
EVALUATE_CONFIG = CONFIG_DIR / "evaluate.json"
SAMPLE_DATA = REPO_ROOT / "bundles" / "lung_cxr_segmentation" / "sample_data"
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "cxr_lung"
DEFAULT_REPORT = REPO_ROOT / "BENCHMARKS.md"
BACKBONE_CHOICES = ("resnet50", "vgg16")
QUICK_OVERRIDES = ("image_size=64", "max_epochs=1", "batch_size=6", "val_batch_size=6")
# A training subprocess stopped at --time_limit_min gets this long to exit before it is killed.
TERMINATE_GRACE_S = 30
_EPOCH_LOG = re.compile(r"Epoch: (\d+)/(\d+), Iter:")


def config_list(*configs: Path) -> str:
    """The ``--config_file`` value MONAI expects for several merged files: ``"['a.json','b.json']"``."""
    return "[" + ",".join(f"'{c}'" for c in configs) + "]"


def hardware_description() -> str:
    """CPU model (from /proc/cpuinfo), usable cores and torch thread count, e.g. 'Intel Xeon ..., 2 cores'."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores (nproc), {platform.system()} {platform.release()}"


def load_average() -> str:
    """The 1/5/15-minute load average, to show how busy the shared machine was."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def parse_overrides(pairs: Sequence[str]) -> list[str]:
    """``["image_size=128"]`` -> ``["--image_size", "128"]`` for ``monai.bundle run``.

    Raises:
        ValueError: a pair without ``=`` or with an empty key.
    """
    args: list[str] = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--override expects KEY=VALUE (e.g. image_size=128), got {pair!r}")
        args += [f"--{key.strip()}", value.strip()]
    return args


def bundle_command(
    workflow: str, configs: Sequence[Path], dataset_dir: Path, backbone: str, bundle_root: Path, overrides: Sequence[str]
) -> list[str]:
    """The ``python -m monai.bundle run`` command line for one workflow ('training' or 'evaluating')."""
    return [
        sys.executable, "-m", "monai.bundle", "run", workflow,
        "--config_file", config_list(*configs),
        "--dataset_dir", str(dataset_dir),
        "--backbone", backbone,
        "--bundle_root", str(bundle_root),
        *overrides,
    ]  # fmt: skip


def run_logged(cmd: Sequence[str], log_path: Path, env: dict[str, str], time_limit_s: float | None) -> tuple[int, bool]:
    """Run ``cmd`` with stdout+stderr appended to ``log_path``; return (exit code, stopped by the time limit)."""
    with open(log_path, "a") as log:
        log.write(f"\n$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
        try:
            return proc.wait(timeout=time_limit_s), False
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=TERMINATE_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return proc.returncode, True


def display_command(cmd: Sequence[str]) -> str:
    """``cmd`` as a user would type it from the repository root: ``python``, relative paths, quoted list."""
    root = f"{REPO_ROOT}{os.sep}"
    parts = ["python"]
    for arg in cmd[1:]:
        arg = arg.replace(root, "")
        parts.append(f'"{arg}"' if arg.startswith("[") else shlex.quote(arg))
    return " ".join(parts)


def epochs_run(log_path: Path) -> int:
    """The last epoch number the trainer logged in ``log_path`` (0 if none)."""
    epochs = [int(m.group(1)) for m in _EPOCH_LOG.finditer(log_path.read_text(errors="replace"))]
    return max(epochs, default=0)


def _fmt(stats: dict[str, Any], key: str) -> str:
    value = stats.get(key)
    return "n/a" if value is None else f"{float(value):.4f}"


def score_cli_masks(bundle_root: Path, log_path: Path, env: dict[str, str]) -> tuple[dict[str, Any], str, float]:
    """Run ``lungseg infer`` (default post-processing) on the test split and score its masks.

    This is the Dice of what a user gets from the command line, as opposed to the bundle's
    evaluation of the raw thresholded network output. Returns (summary, command, seconds).

    Raises:
        RuntimeError: ``lungseg infer`` failed or did not write a mask for a test image.
    """
    from lungseg_monai.evaluation.metrics import segmentation_metrics
    from lungseg_monai.evaluation.report import summarise
    from lungseg_monai.io import read_mask

    test = json.loads((bundle_root / "models" / "datalist_split.json").read_text())["test"]
    out_dir = bundle_root / "cli_test"
    cmd = [
        sys.executable, "-m", "lungseg_monai.cli", "infer", *(item["image"] for item in test),
        "-o", str(out_dir), "--model", str(bundle_root / "models" / "model.pt"), "--formats", "mask", "--overwrite",
        "--no-progress",
    ]  # fmt: skip
    start = time.perf_counter()
    code, _ = run_logged(cmd, log_path, env, None)
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"lungseg infer on the test split exited {code}; see {log_path}")
    rows = []
    for item in test:
        mask_path = out_dir / "masks" / Path(item["image"]).name
        if not mask_path.is_file():
            raise RuntimeError(f"lungseg infer wrote no mask '{mask_path}' for test image '{item['image']}'")
        values = segmentation_metrics(read_mask(mask_path).pixels, read_mask(item["label"]).pixels)
        rows.append({"name": Path(item["image"]).name, "image": item["image"], **values})
    shown = display_command([*cmd[:4], "TEST_IMAGES...", *cmd[4 + len(test):]])
    return summarise(rows), shown, seconds


def report_section(result: dict[str, Any]) -> str:
    """Markdown for one backbone's result (appended to BENCHMARKS.md)."""
    summary = result["summary"]
    dice, iou, hd95, assd = (summary[k] for k in ("dice", "iou", "hd95", "assd"))
    card = result["model_card"]
    stop = " (stopped by --time_limit_min; best checkpoint evaluated)" if result["time_limited"] else ""
    train_time = "not measured (--skip_training)" if result["skipped_training"] else f"{result['train_s'] / 60:.1f} min"
    lines = [
        f"### Quality: {result['backbone']} U-Net ({result['date']})",
        "",
        f"- Test split: {summary['n_images']} images of `{result['dataset_dir']}`, scored at original resolution, network in eval mode.",
        "",
        "| metric | mean | median | min | max |",
        "|---|---|---|---|---|",
        f"| Dice | {_fmt(dice, 'mean')} | {_fmt(dice, 'median')} | {_fmt(dice, 'min')} | {_fmt(dice, 'max')} |",
        f"| IoU | {_fmt(iou, 'mean')} | {_fmt(iou, 'median')} | {_fmt(iou, 'min')} | {_fmt(iou, 'max')} |",
        f"| HD95 ({result['distance_unit']}) | {_fmt(hd95, 'mean')} | {_fmt(hd95, 'median')} | {_fmt(hd95, 'min')} | {_fmt(hd95, 'max')} |",
        f"| ASSD ({result['distance_unit']}) | {_fmt(assd, 'mean')} | {_fmt(assd, 'median')} | {_fmt(assd, 'min')} | {_fmt(assd, 'max')} |",
        "",
        f"- Epochs run: {result['epochs_run']}{stop}; best validation Dice {card.get('val_mean_dice', float('nan')):.4f}"
        f" at epoch {card.get('epoch')} (image size {card.get('image_size')}).",
        f"- Wall time: training {train_time}, evaluation {result['eval_s'] / 60:.1f} min.",
        f"- Hardware: {result['hardware']}; torch threads {result['threads']}; load average at start {result['load_start']},"
        f" at end {result['load_end']} (the machine is shared).",
    ]
    if result.get("cli_summary"):
        cli = result["cli_summary"]["dice"]
        lines += [
            f"- Through `lungseg infer` (its default post-processing: largest components kept, holes filled) on the"
            f" same test images: Dice mean {cli['mean']:.4f}, median {cli['median']:.4f}, min {cli['min']:.4f}"
            f" ({result['cli_s'] / 60:.1f} min; `{result['cli_command']}`, TEST_IMAGES = the test split in"
            " `models/datalist_split.json`).",
        ]
    lines += [
        "- Commands:",
        "",
        "```",
        result["benchmark_command"],
        result["train_command"],
        result["eval_command"],
        "```",
        "",
    ]
    return "\n".join(lines)


def append_report(report_path: Path, section: str) -> None:
    """Append ``section`` to the report, creating it with a title if it does not exist."""
    if not report_path.exists():
        report_path.write_text("# Benchmarks\n\n")
    with open(report_path, "a") as f:
        f.write(section + "\n")


def benchmark_backbone(args: argparse.Namespace, backbone: str, overrides: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Train and evaluate one backbone; return the numbers for the report.

    Raises:
        RuntimeError: training or evaluation failed, or left no model/summary (names the log file).
    """
    bundle_root = Path(args.work_dir).resolve() / backbone
    bundle_root.mkdir(parents=True, exist_ok=True)
    log_path = bundle_root / "benchmark.log"
    dataset_dir = Path(args.dataset_dir).resolve()
    train_cmd = bundle_command("training", [TRAIN_CONFIG, RECIPE_CONFIG], dataset_dir, backbone, bundle_root, overrides)
    eval_cmd = bundle_command(
        "evaluating", [TRAIN_CONFIG, RECIPE_CONFIG, EVALUATE_CONFIG], dataset_dir, backbone, bundle_root, overrides
    )
    load_start = load_average()
    start = time.perf_counter()
    limit = args.time_limit_min * 60 if args.time_limit_min else None
    code, time_limited = (0, False) if args.skip_training else run_logged(train_cmd, log_path, env, limit)
    train_s = time.perf_counter() - start
    model_path = bundle_root / "models" / "model.pt"
    if args.skip_training and not model_path.is_file():
        raise RuntimeError(f"--skip_training needs a trained model at '{model_path}'; train first (drop --skip_training)")
    if (code != 0 and not time_limited) or not model_path.is_file():
        raise RuntimeError(f"training {backbone} failed (exit {code}, model saved: {model_path.is_file()}); see {log_path}")
    start = time.perf_counter()
    code, _ = run_logged(eval_cmd, log_path, env, None)
    eval_s = time.perf_counter() - start
    summary_path = bundle_root / "eval" / "summary.json"
    if code != 0 or not summary_path.is_file():
        raise RuntimeError(f"evaluating {backbone} failed (exit {code}); see {log_path}")
    summary = json.loads(summary_path.read_text())
    cli_summary, cli_command, cli_s = score_cli_masks(bundle_root, log_path, env) if args.cli else (None, "", 0.0)
    card = json.loads(model_path.with_suffix(".json").read_text())
    metrics_csv = (bundle_root / "eval" / "metrics.csv").read_text()
    return {
        "backbone": backbone,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "dataset_dir": os.path.relpath(dataset_dir, REPO_ROOT),
        "summary": summary,
        "model_card": card,
        "distance_unit": "mm" if ",mm" in metrics_csv else "pixel",
        "epochs_run": epochs_run(log_path) or "not in the log",
        "time_limited": time_limited,
        "cli_summary": cli_summary,
        "cli_command": cli_command,
        "cli_s": cli_s,
        "skipped_training": args.skip_training,
        "train_s": train_s,
        "eval_s": eval_s,
        "hardware": hardware_description(),
        "threads": env.get("OMP_NUM_THREADS", "default"),
        "load_start": load_start,
        "load_end": load_average(),
        "benchmark_command": display_command([sys.executable, os.path.relpath(sys.argv[0], REPO_ROOT), *sys.argv[1:]]),
        "train_command": display_command(train_cmd),
        "eval_command": display_command(eval_cmd),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", choices=BACKBONE_CHOICES, action="append", help="repeatable; default: both")
    parser.add_argument(
        "--dataset_dir", default=str(DEFAULT_DATA), help="folder with images/ and masks/, or a CSV/JSON datalist"
    )
    parser.add_argument("--work_dir", default=str(REPO_ROOT.parent / "bench_quality"), help="one bundle_root per backbone here")
    parser.add_argument("--report", default=str(DEFAULT_REPORT), help="Markdown file the results are appended to")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="extra bundle override, repeatable")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the subprocesses")
    parser.add_argument("--time_limit_min", type=float, default=None, help="stop training after this long, evaluate the best model")
    parser.add_argument("--skip_training", action="store_true", help="evaluate the model already in WORK_DIR/BACKBONE")
    parser.add_argument("--cli", action="store_true", help="also score `lungseg infer` masks on the test split")
    parser.add_argument("--quick", action="store_true", help="smoke test: sample data, 64 px, 1 epoch")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides_kv = list(args.override)
    if args.quick:
        overrides_kv = [*QUICK_OVERRIDES, *overrides_kv]
        if args.dataset_dir == str(DEFAULT_DATA):
            args.dataset_dir = str(SAMPLE_DATA)
    try:
        overrides = parse_overrides(overrides_kv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not ((Path(args.dataset_dir) / "images").is_dir() or Path(args.dataset_dir).is_file()):
        print(
            f"error: dataset_dir '{args.dataset_dir}' is neither a folder with images/ nor a CSV/JSON datalist; "
            "pass --dataset_dir DATA",
            file=sys.stderr,
        )
        return 2
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    status = 0
    for backbone in args.backbone or BACKBONE_CHOICES:
        try:
            result = benchmark_backbone(args, backbone, overrides, env)
        except RuntimeError as err:
            print(f"error: {err}", file=sys.stderr)
            status = 1
            continue
        append_report(Path(args.report), report_section(result))
        dice = result["summary"]["dice"]
        print(f"{backbone}: test Dice mean {dice['mean']:.4f} median {dice['median']:.4f} min {dice['min']:.4f}; "
              f"{result['epochs_run']} epochs, {result['train_s'] / 60:.1f} min; appended to {args.report}")  # fmt: skip
    return status


if __name__ == "__main__":
    sys.exit(main())
