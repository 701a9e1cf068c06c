"""Benchmark ``lungseg node``: N real chest instances over K concurrent associations into a node that
sends its results to a real Orthanc; throughput and receive-to-delivered latency.

Latency per instance is from the node's ledger: the time it was spooled (before its C-STORE success
went back) to the time Orthanc confirmed the store of its last result (SEG and SR). Throughput is
instances / (last delivery - first reception). Needs Orthanc with DICOMweb (Debian orthanc,
orthanc-dicomweb) and ../shared/data/dicom.

    python scripts/benchmark_node.py --model MODEL.pt [--count 200] [--associations 4] [--batch-size 8]
    # latency of one film at a time, below capacity: one association per instance, every 2 s
    python scripts/benchmark_node.py --model MODEL.pt --count 20 --interval 2
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the tests' Orthanc and DICOM helpers

from orthanc import running_orthanc  # noqa: E402
from pacs_tools import PACS_AET, c_store, c_store_concurrently, chest_instances, running_node, wait_for  # noqa: E402


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", default="auto")
    parser.add_argument(
        "--interval", type=float, default=None, help="send one instance every INTERVAL seconds instead of all at once"
    )
    args = parser.parse_args()

    import torch

    from lungseg_monai.inference import LungSegmenter

    segmenter = LungSegmenter.from_model(args.model, device="cpu", precision=args.precision)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        sources = chest_instances(tmp_path / "in", args.count)
        with running_orthanc(tmp_path / "orthanc", PACS_AET) as orthanc:
            with running_node(
                segmenter,
                spool=str(tmp_path / "spool"),
                send_to=[orthanc.address],
                write_rejected_seg=True,
                batch_size=args.batch_size,
                max_associations=args.associations,
            ) as node:
                orthanc.add_modality("lungseg", "LUNGSEG", node.port)
                started = time.perf_counter()
                if args.interval is None:
                    statuses = c_store_concurrently(node.port, sources, args.associations)
                else:
                    statuses = []
                    for source in sources:
                        statuses += c_store(node.port, [source])
                        time.sleep(args.interval)
                received_s = time.perf_counter() - started
                wait_for(lambda: node.status()["sent"] >= args.count, 3600, "delivery of every result")
                events = node.spool.events()
                status = node.status()
            seg_count = len(orthanc.instances_by_modality("SEG"))
    received = {e["sop"]: e["time"] for e in events if e["event"] == "received"}
    sent = {e["sop"]: e["time"] for e in events if e["event"] == "sent"}
    latencies = [sent[sop] - received[sop] for sop in sent if sop in received]
    span = max(sent.values()) - min(received.values())
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}; host: {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads; model {segmenter.identity} at {segmenter.card['image_size']} px, "
          f"precision {segmenter.precision.name}")
    mode = f"one every {args.interval} s" if args.interval is not None else f"over {args.associations} associations"
    print(f"{args.count} instances {mode}, batch {args.batch_size}: "
          f"C-STORE statuses ok {statuses.count(0)}/{len(statuses)}, all received in {received_s:.1f} s")
    print(f"delivered {len(sent)}; SEGs in Orthanc {seg_count}; failed {status['failed']}; "
          f"throughput {len(sent) / span:.2f} instances/s")
    print(f"receive-to-delivered latency: median {statistics.median(latencies):.1f} s, "
          f"p95 {_percentile(latencies, 0.95):.1f} s, max {max(latencies):.1f} s")


if __name__ == "__main__":
    main()
