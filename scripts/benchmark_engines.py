"""Other inference engines for the ResNet50-UNet on CPU, measured: eager fp32, channels-last,
``torch.compile``, TorchScript (MONAI ``convert_to_torchscript``, what ``ckpt_export`` writes) and
ONNX (torch's TorchScript-based exporter, run by onnxruntime's CPU provider).

One run, interleaved rounds (one forward of each engine per round), median seconds per forward,
batch 1 at ``--size`` px. Agreement with eager fp32 on real radiographs from the embedded sample:
the largest probability difference and the fraction of mask pixels that differ at the model's
threshold. Prints a Markdown table.

    python scripts/benchmark_engines.py --model runs/r50/models/model.pt --size 512 --rounds 10
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_IMAGES = REPO_ROOT / "bundles" / "lung_cxr_segmentation" / "sample_data" / "images"
sys.path.insert(0, str(REPO_ROOT / "scripts"))
from benchmark_quality import hardware_description, load_average  # noqa: E402


def _inputs(segmenter, size: int, count: int) -> list[torch.Tensor]:  # noqa: ANN001
    from lungseg_monai.io import read_radiograph

    tensors = []
    for path in sorted(SAMPLE_IMAGES.glob("*.png"))[:count]:
        prepared = segmenter.prepare(read_radiograph(path))[None]
        tensors.append(torch.nn.functional.interpolate(prepared, size=(size, size), mode="bilinear"))
    return tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--images", type=int, default=6)
    args = parser.parse_args()

    from monai.networks.utils import convert_to_torchscript

    from lungseg_monai.inference import LungSegmenter

    segmenter = LungSegmenter.from_model(args.model, device="cpu", precision="fp32")
    network = segmenter.network.eval()
    threshold = segmenter.threshold
    inputs = _inputs(segmenter, args.size, args.images)
    example = inputs[0]
    engines: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    notes: dict[str, str] = {}
    engines["eager fp32"] = network

    cl_network = copy.deepcopy(network).to(memory_format=torch.channels_last)
    engines["eager fp32 channels-last"] = lambda x: cl_network(x.contiguous(memory_format=torch.channels_last))

    started = time.perf_counter()
    compiled = torch.compile(copy.deepcopy(network))
    with torch.inference_mode():
        compiled(example)
    notes["torch.compile"] = f"first call (compilation) {time.perf_counter() - started:.0f} s"
    engines["torch.compile"] = compiled

    started = time.perf_counter()
    scripted = convert_to_torchscript(copy.deepcopy(network))
    notes["TorchScript"] = f"export {time.perf_counter() - started:.1f} s"
    engines["TorchScript"] = scripted

    with tempfile.TemporaryDirectory() as tmp:
        import onnxruntime

        onnx_path = Path(tmp) / "model.onnx"
        started = time.perf_counter()
        # MONAI's convert_to_onnx (what `monai.bundle onnx_export` runs) calls torch.onnx.export with
        # torch's default, the dynamo exporter, which needs onnxscript (not installable beside
        # numpy<2 here); the TorchScript-based exporter (dynamo=False) is what use_trace=True meant.
        torch.onnx.export(
            copy.deepcopy(network),
            (example,),
            str(onnx_path),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        notes["ONNX (onnxruntime)"] = f"export {time.perf_counter() - started:.1f} s, onnxruntime {onnxruntime.__version__}"
        engines["ONNX (onnxruntime)"] = lambda x: torch.from_numpy(session.run(None, {"image": x.numpy()})[0])

        with torch.inference_mode():
            reference = [torch.sigmoid(network(x)) for x in inputs]
            agreement = {}
            for name, engine in engines.items():
                probs = [torch.sigmoid(engine(x).float()) for x in inputs]
                diff = max(float((p - r).abs().max()) for p, r in zip(probs, reference))
                flipped = np.mean([float(((p >= threshold) != (r >= threshold)).float().mean()) for p, r in zip(probs, reference)])
                agreement[name] = (diff, flipped)
            times: dict[str, list[float]] = {name: [] for name in engines}
            for name, engine in engines.items():  # warm-up
                engine(example)
            load_before = load_average()
            for _ in range(args.rounds):
                for name, engine in engines.items():
                    started = time.perf_counter()
                    engine(example)
                    times[name].append(time.perf_counter() - started)
            load_after = load_average()
    eager = statistics.median(times["eager fp32"])
    print(f"{hardware_description()}; {torch.get_num_threads()} threads; torch {torch.__version__}; "
          f"load {load_before} -> {load_after}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"model {segmenter.identity}, batch 1 at {args.size} px, {args.rounds} interleaved rounds, "
          f"agreement on {len(inputs)} sample radiographs at threshold {threshold:.3f}\n")
    print("| engine | median s/forward | images/s | vs eager | max prob diff | mask pixels differing | notes |")
    print("|---|---|---|---|---|---|---|")
    for name in engines:
        median = statistics.median(times[name])
        diff, flipped = agreement[name]
        print(f"| {name} | {median:.3f} | {1 / median:.2f} | {eager / median:.2f}x | {diff:.2e} | {flipped:.2e} | "
              f"{notes.get(name, '')} |")


if __name__ == "__main__":
    main()
