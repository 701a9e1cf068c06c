"""CPU speed and memory benchmark: our two U-Nets against MONAI and segmentation_models_pytorch.

In ONE run on one machine it measures:

1. model-only inference images/s at 512x512, batch 1, eager fp32, ``torch.inference_mode``:
   our ``LungUNet`` ResNet50 and VGG16, MONAI ``FlexibleUNet(backbone="resnet50")``,
   segmentation_models_pytorch ``Unet("resnet50")`` and ``Unet("vgg16")`` (random weights,
   1 input channel, 1 output channel); our networks also at the size they were trained at, and
   our ResNet50-UNet as the product runs it (``precision auto``: bf16 on CPUs with bf16
   instructions);
2. end-to-end images/s of ``lungseg infer DIR -o OUT --model MODEL.pt`` on a folder of 512x512
   PNGs (read, preprocess, model, post-process, write), from two folder sizes so that process
   start-up is separated from the per-image rate;
3. training images/s of one optimiser step (DiceCE loss, Adam) at 256 px, batch 8, for the same
   networks (ours also with ``precision auto``, as the bundle trains), and the images/s the
   bundle's cached training data pipeline delivers;
4. peak RSS of ``lungseg infer`` on a 2048x2048 uncompressed DICOM, and RSS over a 200-image folder.

Issue 12's targets, printed at the end: at the same input size, our end to end (start-up
included) at least 3x the peer's fp32 forward, our training step at least 2.5x the peer's.

Timings are interleaved (one iteration of each model per round) and the median per-iteration
time is reported, so a change in background load hits all models alike. Prints a Markdown
section; ``--report`` appends it to BENCHMARKS.md.

Usage (from the repository root)::

    python scripts/benchmark_speed.py --model resnet50=runs/resnet50/models/model.pt --report BENCHMARKS.md
    python scripts/benchmark_speed.py --quick     # smoke test: tiny sizes, 1 iteration
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))
from benchmark_quality import RECIPE_CONFIG, SAMPLE_DATA, TRAIN_CONFIG, display_command, hardware_description, load_average  # noqa: E402

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DICOM_SOURCE = SHARED_DATA / "dicom" / "RG1_J2KI.dcm"
OUR_BACKBONES = ("resnet50", "vgg16")
PEERS = ("monai FlexibleUNet-resnet50", "smp Unet-resnet50", "smp Unet-vgg16")
# Peer the end-to-end and training targets are measured against, and the target ratios (issue 12):
# at the same input size, our end to end (start-up included) >= 3x the peer's eager fp32 forward,
# our training step (with the bundle's precision) >= 2.5x the peer's eager fp32 step.
TARGET_PEER = "smp Unet-resnet50"
TARGET_RATIO = 3.0
TRAIN_TARGET_RATIO = 2.5
# Our ResNet50-UNet as the product runs it: precision "auto" (bf16 autocast + channels-last and fp32
# high-resolution stages on CPUs with bf16 instructions), next to the eager fp32 networks.
OURS_AUTO = "ours resnet50 (precision auto)"
MEMORY_LIMIT_MB = 2048
PARTS = ("model", "train", "e2e", "memory")
RSS_POLL_S = 0.1
BYTES_PER_MB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Sizes and repetitions of one benchmark run (full or ``--quick``)."""

    infer_size: int = 512
    infer_rounds: int = 6
    train_size: int = 256
    train_batch: int = 8
    train_rounds: int = 3
    e2e_images: int = 60
    e2e_rounds: int = 2
    memory_dicom_size: int = 2048
    memory_folder_images: int = 200
    data_batches: int = 20


QUICK = Settings(
    infer_size=32, infer_rounds=1, train_size=32, train_batch=2, train_rounds=1,
    e2e_images=2, e2e_rounds=1, memory_dicom_size=256, memory_folder_images=3, data_batches=1,
)  # fmt: skip


# ----------------------------------------------------------------------------- networks


def build_network(name: str) -> torch.nn.Module:
    """One of our networks ('ours resnet50'/'ours vgg16') or a peer from PEERS, 1 in / 1 out channel, random weights."""
    if name.startswith("ours "):
        from lungseg_monai.networks import LungUNet

        return LungUNet(backbone=name.split()[1])
    if name == "monai FlexibleUNet-resnet50":
        from monai.networks.nets import FlexibleUNet

        return FlexibleUNet(in_channels=1, out_channels=1, backbone="resnet50", pretrained=False, spatial_dims=2)
    if name.startswith("smp Unet-"):
        import segmentation_models_pytorch as smp

        return smp.Unet(name.split("-", 1)[1], encoder_weights=None, in_channels=1, classes=1)
    raise ValueError(f"unknown network {name!r}; expected 'ours resnet50', 'ours vgg16' or one of {PEERS}")


def interleaved_median_seconds(steps: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Run every step once as warm-up, then ``rounds`` rounds of one call each; median seconds per call."""
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def auto_precision_network() -> tuple[torch.nn.Module, Any]:
    """Our ResNet50-UNet prepared for precision ``auto`` on the CPU, and that precision."""
    from lungseg_monai.inference import resolve_precision
    from lungseg_monai.networks import LungUNet

    precision = resolve_precision("auto", "cpu")
    return precision.prepare_network(LungUNet(backbone="resnet50")), precision


def _fp32() -> Any:
    """Plain fp32 (:class:`~lungseg_monai.inference.Precision`): the networks without a precision of their own."""
    from lungseg_monai.inference import resolve_precision

    return resolve_precision("fp32", "cpu")


def model_only_inference(
    networks: dict[str, torch.nn.Module], sizes: dict[str, int], rounds: int, precisions: dict[str, Any] | None = None
) -> dict[str, float]:
    """Images/s of ``network(x)`` with x of shape (1, 1, size, size), eval mode, inference_mode.

    fp32 unless ``precisions`` gives the network's :class:`~lungseg_monai.inference.Precision`.
    """
    precisions = precisions or {}
    steps: dict[str, Callable[[], None]] = {}
    for label, size in sizes.items():
        name = label.split(" @")[0]
        network = networks[name].eval()
        x = torch.randn(1, 1, size, size)
        run = precisions.get(name, _fp32()).run

        def step(network: torch.nn.Module = network, x: torch.Tensor = x, run: Callable = run) -> None:
            with torch.inference_mode():
                run(network, x)

        steps[label] = step
    return {label: 1.0 / s for label, s in interleaved_median_seconds(steps, rounds).items()}


def training_step_speed(
    networks: dict[str, torch.nn.Module], size: int, batch: int, rounds: int, precisions: dict[str, Any] | None = None
) -> dict[str, float]:
    """Images/s of one train-mode step (forward, DiceCE loss, backward, Adam) on (batch, 1, size, size).

    fp32 unless ``precisions`` gives the network's precision (then as the bundle trains: autocast
    forward, float32 logits into the loss).
    """
    precisions = precisions or {}
    from monai.losses import DiceCELoss

    loss_fn = DiceCELoss(sigmoid=True)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, size, size, generator=generator)
    y = (torch.rand(batch, 1, size, size, generator=generator) > 0.6).float()
    steps: dict[str, Callable[[], None]] = {}
    for name, network in networks.items():
        optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
        run = precisions.get(name, _fp32()).run

        def step(
            network: torch.nn.Module = network, optimizer: torch.optim.Optimizer = optimizer, run: Callable = run
        ) -> None:
            network.train()
            optimizer.zero_grad(set_to_none=True)
            loss_fn(run(network, x), y).backward()
            optimizer.step()

        steps[name] = step
    return {name: batch / s for name, s in interleaved_median_seconds(steps, rounds).items()}


def data_pipeline_speed(dataset_dir: Path, size: int, batch: int, n_batches: int) -> tuple[float, float]:
    """The bundle's training dataloader (CacheDataset + random transforms): (images/s, seconds to cache)."""
    from monai.bundle import ConfigParser

    with tempfile.TemporaryDirectory() as root:
        parser = ConfigParser()
        parser.read_config([str(TRAIN_CONFIG), str(RECIPE_CONFIG)])
        parser.update({"bundle_root": root, "dataset_dir": str(dataset_dir), "image_size": size, "batch_size": batch})
        start = time.perf_counter()
        loader = parser.get_parsed_content("train#dataloader")
        cache_s = time.perf_counter() - start
        images, start = 0, time.perf_counter()
        while images < n_batches * batch:
            for item in loader:
                images += int(item["image"].shape[0])
                if images >= n_batches * batch:
                    break
        return images / (time.perf_counter() - start), cache_s


# ----------------------------------------------------------------------------- inputs


def real_images(n: int) -> list[Path]:
    """``n`` real radiographs: the shared cxr_lung images if present, else the embedded sample (repeated)."""
    folder = SHARED_DATA / "cxr_lung" / "images"
    if not folder.is_dir():
        folder = SAMPLE_DATA / "images"
    files = sorted(folder.glob("*.png"))
    if not files:
        raise FileNotFoundError(f"no PNG radiographs in '{folder}'; the benchmark needs real images to read")
    return [files[i % len(files)] for i in range(n)]


def write_png_folder(folder: Path, n: int, size: int | None) -> Path:
    """``n`` real radiographs as PNGs in ``folder``, resized to size x size (or copied as they are if None)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, source in enumerate(real_images(n)):
        image = Image.open(source).convert("L")
        if size is not None:
            image = image.resize((size, size), Image.BILINEAR)
        image.save(folder / f"{i:04d}_{source.stem}.png")
    return folder


def write_large_dicom(target: Path, size: int) -> Path:
    """An uncompressed size x size 16-bit DICOM made from a real chest radiograph's pixels.

    Uses ../shared/data/dicom/RG1_J2KI.dcm (JPEG 2000, decoded with pylibjpeg) when present; else a
    sample PNG wrapped in a new Secondary Capture dataset. Works with pydicom 2 and 3.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if DICOM_SOURCE.is_file():
        ds = pydicom.dcmread(DICOM_SOURCE)
        pixels = ds.pixel_array.astype(np.float32)
    else:
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
        ds.Modality, ds.PhotometricInterpretation, ds.SamplesPerPixel = "OT", "MONOCHROME2", 1
        pixels = np.asarray(Image.open(real_images(1)[0]).convert("L"), dtype=np.float32) * 64
    resized = torch.nn.functional.interpolate(torch.from_numpy(pixels)[None, None], size=(size, size), mode="bilinear")
    array = resized[0, 0].round().clamp(0, 2**15 - 1).numpy().astype(np.uint16)
    ds.Rows, ds.Columns = size, size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 14, 0
    ds.SOPInstanceUID = generate_uid()
    ds.PixelData = array.tobytes()
    ds["PixelData"].VR = "OW"
    ds["PixelData"].is_undefined_length = False
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    target.parent.mkdir(parents=True, exist_ok=True)
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(target, enforce_file_format=True)
    else:
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(target, write_like_original=False)
    return target


def random_model(folder: Path, backbone: str, image_size: int) -> Path:
    """A random-weights ``model.pt`` + ``model.json`` card (speed does not depend on the weights)."""
    from lungseg_monai.engine.checkpoint import save_checkpoint
    from lungseg_monai.networks import LungUNet

    path = folder / backbone / "model.pt"
    save_checkpoint(LungUNet(backbone=backbone).state_dict(), path)
    card = {"backbone": backbone, "image_size": image_size, "note": "random weights, written by benchmark_speed.py"}
    path.with_suffix(".json").write_text(json.dumps(card))
    return path


# ----------------------------------------------------------------------------- end to end


def cli_has_infer(env: dict[str, str]) -> bool:
    """Whether ``python -m lungseg_monai.cli infer --help`` works in this checkout."""
    proc = subprocess.run(
        [sys.executable, "-m", "lungseg_monai.cli", "infer", "--help"], capture_output=True, env=env, cwd=REPO_ROOT
    )
    return proc.returncode == 0


def segment_command(use_cli: bool, input_dir: Path, output_dir: Path, model: Path) -> list[str]:
    """``lungseg infer INPUT -o OUT --model MODEL`` or, without the CLI, this script's LungSegmenter loop."""
    if use_cli:
        return [sys.executable, "-m", "lungseg_monai.cli", "infer", str(input_dir), "-o", str(output_dir), "--model", str(model)]
    return [sys.executable, str(Path(__file__).resolve()), "--segment_folder", str(input_dir), str(output_dir), str(model)]


def segment_folder(input_dir: Path, output_dir: Path, model: Path) -> int:
    """Fallback end-to-end pipeline: read each radiograph, ``LungSegmenter.segment``, write a 0/255 PNG.

    A file that cannot be read is reported and skipped; returns 1 if any failed.
    """
    from lungseg_monai.inference import LungSegmenter
    from lungseg_monai.io import RadiographReadError, read_radiograph
    from lungseg_monai.outputs import save_png

    segmenter = LungSegmenter.from_model(model, device="cpu")
    failed = 0
    for path in sorted(p for p in input_dir.iterdir() if p.is_file()):
        try:
            mask = segmenter.segment(read_radiograph(path))
        except RadiographReadError as err:
            print(f"error: {err}", file=sys.stderr)
            failed += 1
            continue
        save_png(mask * 255, output_dir / f"{path.stem}_mask.png")
    return 1 if failed else 0


@dataclass
class ProcessRun:
    """Wall time, peak RSS (from wait4) and sampled RSS of one subprocess."""

    seconds: float
    peak_rss_mb: float
    rss_samples_mb: list[tuple[float, float]]


# Runs a command and writes its exact peak RSS (KiB, from os.wait4) to argv[1]. It runs in a fresh
# python with nothing imported, so the fork before exec does not count the benchmark's own memory
# (torch, five networks) as the child's, as forking the command from this process would.
_RSS_WRAPPER = (
    "import os, subprocess, sys\n"
    "proc = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(proc.pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def run_measured(cmd: Sequence[str], env: dict[str, str]) -> ProcessRun:
    """Run ``cmd`` through ``_RSS_WRAPPER``: wall time, exact peak RSS, and RSS sampled over time with psutil.

    Raises:
        RuntimeError: the command exited non-zero (with the end of its output).
    """
    import psutil

    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile("w+") as log:
        peak_file = Path(tmp) / "peak_kib"
        wrapped = [sys.executable, "-S", "-c", _RSS_WRAPPER, str(peak_file), *cmd]
        start = time.perf_counter()
        proc = subprocess.Popen(wrapped, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
        wrapper = psutil.Process(proc.pid)
        samples: list[tuple[float, float]] = []
        while proc.poll() is None:
            try:
                rss = sum(child.memory_info().rss for child in wrapper.children())
            except psutil.Error:
                rss = 0
            if rss:
                samples.append((time.perf_counter() - start, rss / BYTES_PER_MB))
            time.sleep(RSS_POLL_S)
        seconds = time.perf_counter() - start
        if proc.returncode != 0 or not peak_file.is_file():
            log.seek(0)
            raise RuntimeError(f"{shlex.join(cmd)} exited {proc.returncode}:\n{log.read()[-3000:]}")
        peak_mb = int(peak_file.read_text()) / 1024
    return ProcessRun(seconds, peak_mb, samples)


def end_to_end(
    use_cli: bool, model: Path, work: Path, n_images: int, size: int, rounds: int, env: dict[str, str]
) -> dict[str, float]:
    """Images/s through the whole pipeline: total (incl. start-up) and per image.

    A run on ``n_images // 4`` images and one on ``n_images`` alternate ``rounds`` times (fresh
    output folders each time); the per-image rate comes from the difference of their median
    wall times, which removes process start-up (imports, model loading).
    """
    n_small = max(1, n_images // 4)
    inputs = {n_small: write_png_folder(work / f"in_{n_small}", n_small, size)}
    inputs[n_images] = write_png_folder(work / f"in_{n_images}", n_images, size)
    seconds: dict[int, list[float]] = {n_small: [], n_images: []}
    for rep in range(rounds):
        for n, folder in inputs.items():
            out = work / f"out_{n}_{rep}"
            seconds[n].append(run_measured(segment_command(use_cli, folder, out, model), env).seconds)
            written = sum(1 for p in out.rglob("*.png"))
            if written < n:
                raise RuntimeError(f"end-to-end run wrote {written} PNGs for {n} inputs into '{out}'")
    t_small, t_large = statistics.median(seconds[n_small]), statistics.median(seconds[n_images])
    marginal = t_large - t_small
    per_image_s = marginal / (n_images - n_small) if marginal > 0 and n_images > n_small else float("nan")
    return {
        "total_ips": n_images / t_large,
        "per_image_ips": 1.0 / per_image_s,
        "startup_s": t_small - n_small * per_image_s,
        "seconds": t_large,
    }


def rss_at(samples: Sequence[tuple[float, float]], fraction: float, seconds: float) -> float:
    """The first sampled RSS (MB) at or after ``fraction`` of the run's wall time (the last sample if none)."""
    return next((rss for t, rss in samples if t >= fraction * seconds), samples[-1][1])


def memory_profile(use_cli: bool, model: Path, work: Path, settings: Settings, env: dict[str, str]) -> dict[str, Any]:
    """Peak RSS on one small PNG (the baseline: imports + model) and on one large DICOM; RSS along a long folder run.

    Start-up (imports, model loading) takes a large share of a short run, so the folder's RSS is
    read at 40% and 70% of the run's wall time and at its end: flat means no growth between them.
    """
    small = write_png_folder(work / "one_small_png", 1, 256)
    baseline = run_measured(segment_command(use_cli, small, work / "out_small", model), env)
    dicom_dir = work / "dicom_large"
    write_large_dicom(dicom_dir / "large.dcm", settings.memory_dicom_size)
    big = run_measured(segment_command(use_cli, dicom_dir, work / "out_dicom", model), env)
    folder = write_png_folder(work / "folder_real", settings.memory_folder_images, None)
    run = run_measured(segment_command(use_cli, folder, work / "out_folder", model), env)
    samples = run.rss_samples_mb or [(run.seconds, run.peak_rss_mb)]
    return {
        "baseline_peak_mb": baseline.peak_rss_mb,
        "dicom_peak_mb": big.peak_rss_mb,
        "folder_rss_mb": {f"{int(f * 100)}%": rss_at(samples, f, run.seconds) for f in (0.4, 0.7)} | {"end": samples[-1][1]},
        "folder_peak_mb": run.peak_rss_mb,
        "folder_seconds": run.seconds,
    }


# ----------------------------------------------------------------------------- report


def markdown(results: dict[str, Any]) -> str:
    """The Markdown section for BENCHMARKS.md (only the parts that were run)."""
    s = results["settings"]
    ref = results["model_only"][f"{TARGET_PEER} @{s.infer_size}"]
    lines = [
        f"### Speed and memory on CPU ({results['date']})",
        "",
        f"- Hardware: {results['hardware']}; torch {torch.__version__}, {results['threads']} threads;"
        f" load average at start {results['load_start']}, at end {results['load_end']} (the machine is shared).",
        f"- Command: `{results['command']}`",
        "",
        f"**Model-only inference**, batch 1, eager fp32 (`{OURS_AUTO}`: {results['auto_precision']}), `torch.inference_mode`,"
        f" random weights, median of {s.infer_rounds} interleaved rounds:",
        "",
        f"| network @ input size | images/s | vs {TARGET_PEER} @{s.infer_size} |",
        "|---|---|---|",
    ]
    lines += [f"| {label} | {ips:.2f} | {ips / ref:.2f}x |" for label, ips in results["model_only"].items()]
    if "e2e" in results:
        kind = "`lungseg infer`" if results["use_cli"] else "the `LungSegmenter` loop of this script (`lungseg infer` was not available)"
        lines += [
            "",
            f"**End to end** through {kind}, {s.e2e_images} real radiographs resized to {s.infer_size}x{s.infer_size} PNG"
            " (read, preprocess, model at its trained size, probabilities resized back to 512, PNG written);"
            f" per-image rate from the difference of the median times of {s.e2e_rounds} alternating {max(1, s.e2e_images // 4)}-"
            f" and {s.e2e_images}-image runs (start-up removed):",
            "",
            f"| model | runs at | images/s per image | images/s incl. start-up | start-up s | per image vs {TARGET_PEER}"
            f" model-only | incl. start-up vs {TARGET_PEER} model-only |",
            "|---|---|---|---|---|---|---|",
        ]
        for backbone, row in results["e2e"].items():
            lines.append(
                f"| ours {backbone} | {row['image_size']} px | {row['per_image_ips']:.2f} | {row['total_ips']:.2f} |"
                f" {row['startup_s']:.1f} | {row['per_image_ips'] / ref:.2f}x | {row['total_ips'] / ref:.2f}x |"
            )
    if "train" in results:
        lines += [
            "",
            f"**Training step**, {s.train_size} px, batch {s.train_batch}, DiceCE + Adam, eager fp32 (`{OURS_AUTO}`:"
            f" {results['auto_precision']}, as the bundle trains), median of {s.train_rounds} interleaved rounds:",
            "",
            f"| network | images/s | vs {TARGET_PEER} |",
            "|---|---|---|",
        ]
        peer = results["train"][TARGET_PEER]
        lines += [f"| {name} | {ips:.2f} | {ips / peer:.2f}x |" for name, ips in results["train"].items()]
        data_ips, cache_s = results["data"]
        lines += [
            "",
            f"Bundle training data pipeline (CacheDataset of decoded, resized images + random augmentation, {s.train_size} px,"
            f" batch {s.train_batch}): {data_ips:.1f} images/s after a {cache_s:.1f} s caching pass.",
        ]
    if "memory" in results:
        mem = results["memory"]
        lines += [
            "",
            f"**Memory** ({results['memory_model']}; peak RSS exact from `wait4`, RSS over time sampled every {RSS_POLL_S} s):",
            "",
            f"- {s.memory_dicom_size}x{s.memory_dicom_size} uncompressed 16-bit DICOM: peak RSS {mem['dicom_peak_mb']:.0f} MB"
            f" (limit {MEMORY_LIMIT_MB} MB); the same command on one 256x256 PNG: {mem['baseline_peak_mb']:.0f} MB"
            " (the process itself: torch, MONAI, the model).",
            f"- {s.memory_folder_images} real radiographs (native sizes up to 1024 px) in one folder, {mem['folder_seconds']:.0f} s:"
            " RSS " + ", ".join(f"{rss:.0f} MB at {when}" for when, rss in mem["folder_rss_mb"].items())
            + f" of the run; peak {mem['folder_peak_mb']:.0f} MB.",
        ]
    return "\n".join(lines) + "\n"


def parse_models(pairs: Sequence[str]) -> dict[str, Path]:
    """``["resnet50=path/model.pt"]`` -> {"resnet50": Path}; raises ValueError on a bad pair or missing file."""
    models = {}
    for pair in pairs:
        backbone, sep, path = pair.partition("=")
        if not sep or backbone not in OUR_BACKBONES:
            raise ValueError(f"--model expects BACKBONE=PATH with BACKBONE in {OUR_BACKBONES}, got {pair!r}")
        if not Path(path).is_file():
            raise ValueError(f"--model {backbone}: '{path}' does not exist; pass a models/model.pt from the bundle's training")
        models[backbone] = Path(path)
    return models


def parse_parts(value: str) -> list[str]:
    """``"model,e2e"`` -> ["model", "e2e"]; raises ValueError naming an unknown part."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise ValueError(f"--parts takes a comma-separated subset of {','.join(PARTS)}, got {value!r}")
    return parts


def recipe_image_size() -> int:
    """The image size the CPU recipe trains at (what a model from it runs at)."""
    return int(json.loads(RECIPE_CONFIG.read_text())["image_size"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[], metavar="BACKBONE=PATH", help="trained model.pt for end to end")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all usable cores)")
    parser.add_argument("--report", default=None, help="append the Markdown section to this file (e.g. BENCHMARKS.md)")
    parser.add_argument("--work_dir", default=None, help="keep inputs/outputs here (default: a temporary folder)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)} (model always runs)")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny sizes, 1 iteration, 2 images")
    parser.add_argument("--segment_folder", nargs=3, metavar=("INPUT", "OUTPUT", "MODEL"), help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.segment_folder:
        return segment_folder(*(Path(p) for p in args.segment_folder))
    try:
        models = parse_models(args.model)
        parts = parse_parts(args.parts)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    settings = QUICK if args.quick else Settings()
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    results: dict[str, Any] = {
        "settings": settings, "threads": threads, "load_start": load_average(), "hardware": hardware_description(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": display_command([sys.executable, os.path.relpath(sys.argv[0], REPO_ROOT), *sys.argv[1:]]),
    }  # fmt: skip
    default_size = QUICK.infer_size if args.quick else recipe_image_size()
    run_size = {b: default_size for b in OUR_BACKBONES}
    run_size.update({b: int(json.loads(p.with_suffix(".json").read_text())["image_size"]) for b, p in models.items()})

    names = [f"ours {b}" for b in OUR_BACKBONES] + list(PEERS)
    networks = {name: build_network(name) for name in names}
    networks[OURS_AUTO], auto = auto_precision_network()
    results["auto_precision"] = auto.name + (" autocast + channels-last, fp32 high-resolution stages" if auto.dtype else "")
    precisions = {OURS_AUTO: auto}
    sizes = {f"{name} @{settings.infer_size}": settings.infer_size for name in [*names, OURS_AUTO]}
    sizes.update({f"ours {b} @{run_size[b]}": run_size[b] for b in OUR_BACKBONES})
    print("model-only inference ...", flush=True)
    results["model_only"] = model_only_inference(networks, sizes, settings.infer_rounds, precisions)
    if "train" in parts:
        print("training step ...", flush=True)
        results["train"] = training_step_speed(
            networks, settings.train_size, settings.train_batch, settings.train_rounds, precisions
        )
        dataset = SHARED_DATA / "cxr_lung" if (SHARED_DATA / "cxr_lung").is_dir() and not args.quick else SAMPLE_DATA
        results["data"] = data_pipeline_speed(dataset, settings.train_size, settings.train_batch, settings.data_batches)
    del networks
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        use_cli = results["use_cli"] = cli_has_infer(env) if {"e2e", "memory"} & set(parts) else False
        model_of = {b: models.get(b) or random_model(work / "models", b, run_size[b]) for b in OUR_BACKBONES}
        if "e2e" in parts:
            results["e2e"] = {}
            for backbone in OUR_BACKBONES:
                print(f"end to end {backbone} ({'lungseg infer' if use_cli else 'LungSegmenter loop'}) ...", flush=True)
                row = end_to_end(
                    use_cli, model_of[backbone], work / f"e2e_{backbone}", settings.e2e_images, settings.infer_size,
                    settings.e2e_rounds, env,
                )
                results["e2e"][backbone] = {**row, "image_size": run_size[backbone]}
        if "memory" in parts:
            print("memory ...", flush=True)
            weights = "trained" if "resnet50" in models else "random weights"
            tool = "`lungseg infer`" if use_cli else "the LungSegmenter loop"
            results["memory_model"] = f"ResNet50-UNet ({weights}) at {run_size['resnet50']} px through {tool}"
            results["memory"] = memory_profile(use_cli, model_of["resnet50"], work / "memory", settings, env)
    results["load_end"] = load_average()
    text = markdown(results)
    print(text)
    if args.report:
        with open(args.report, "a") as f:
            f.write(text + "\n")
    if "e2e" in results:
        ref = results["model_only"][f"{TARGET_PEER} @{settings.infer_size}"]
        row = results["e2e"]["resnet50"]
        print(
            f"ours resnet50 end to end / {TARGET_PEER} model-only: {row['total_ips'] / ref:.2f}x start-up included,"
            f" {row['per_image_ips'] / ref:.2f}x per image (target {TARGET_RATIO}x)"
        )
    if "train" in results:
        ratio = results["train"][OURS_AUTO] / results["train"][TARGET_PEER]
        print(f"{OURS_AUTO} training step / {TARGET_PEER} fp32: {ratio:.2f}x (target {TRAIN_TARGET_RATIO}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
