#!/usr/bin/env bash
# GPU benchmark for the lent device machine (never run in CI). Budget: under 8 minutes on one H100.
#
#   scripts/gpu_benchmark.sh [--dry-run] [--out DIR] [--data DIR] [--epochs N]
#
# 1. inference images/s at 512x512, fp32 and AMP (bf16 autocast), batch 1 and 32, our two U-Nets and
#    the peers (MONAI FlexibleUNet-resnet50, segmentation_models_pytorch Unet-resnet50/-vgg16);
# 2. training images/s (512 px, batch 16, AMP) for the same networks;
# 3. one full ResNet50-UNet training through the bundle at 512 px on the developers' data
#    (../shared/data/cxr_lung, 0.5/0.25/0.25 split) and its test Dice at original resolution,
#    via scripts/benchmark_quality.py (stopped at a time limit if it runs long).
# Results: DIR/gpu_benchmark.md (Markdown with the device name), DIR/*.log. Default DIR: $OUT or ./gpu_bench_out.
#
# --dry-run runs the same steps on the CPU at tiny sizes (64 px, 1 iteration, the embedded sample
# data, 1 epoch) in a few minutes, to check the script before spending device time.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${OUT:-$REPO_ROOT/gpu_bench_out}"
DATA_DIR="$REPO_ROOT/../shared/data/cxr_lung"
DRY_RUN=0
EPOCHS=40
TRAIN_TIME_LIMIT_MIN=4.5

while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1; shift ;;
        --out) OUT_DIR="$2"; shift 2 ;;
        --data) DATA_DIR="$2"; shift 2 ;;
        --epochs) EPOCHS="$2"; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "error: unknown argument '$1'; expected --dry-run, --out DIR, --data DIR or --epochs N" >&2; exit 2 ;;
    esac
done

PYTHON="${PYTHON:-python}"
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT_DIR"
REPORT="$OUT_DIR/gpu_benchmark.md"

if [[ $DRY_RUN == 1 ]]; then
    DEVICE=cpu; SIZE=64; ITERS=1; BATCHES="1 2"; TRAIN_BATCH=2
    QUALITY_ARGS=(--quick)
    DEVICE_NAME="CPU dry run: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(getconf _NPROCESSORS_ONLN) cores"
else
    if ! command -v nvidia-smi >/dev/null || ! nvidia-smi >/dev/null 2>&1; then
        echo "error: no NVIDIA GPU visible (nvidia-smi failed); run with --dry-run to test on the CPU" >&2
        exit 1
    fi
    if [[ ! -d "$DATA_DIR/images" ]]; then
        echo "error: no images/ in data folder '$DATA_DIR'; pass --data DIR" >&2
        exit 1
    fi
    DEVICE=cuda; SIZE=512; ITERS=20; BATCHES="1 32"; TRAIN_BATCH=16
    QUALITY_ARGS=(--dataset_dir "$DATA_DIR" --time_limit_min "$TRAIN_TIME_LIMIT_MIN"
                  --override image_size=512 --override max_epochs="$EPOCHS" --override batch_size=16
                  --override val_batch_size=16 --override num_workers=4)
    DEVICE_NAME="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
fi

{
    echo "### GPU benchmark ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo
    echo "- Device: $DEVICE_NAME"
    echo "- Command: \`scripts/gpu_benchmark.sh $([[ $DRY_RUN == 1 ]] && echo --dry-run) --epochs $EPOCHS\`"
    echo
} > "$REPORT"

echo "== 1-2. inference and training speed on $DEVICE" >&2
"$PYTHON" - "$DEVICE" "$SIZE" "$ITERS" "$TRAIN_BATCH" $BATCHES >> "$REPORT" 2> "$OUT_DIR/speed.log" <<'EOF'
import sys, time
import torch
sys.path.insert(0, "scripts")
from benchmark_speed import OUR_BACKBONES, PEERS, build_network

device, size, iters, train_batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
batches = [int(b) for b in sys.argv[5:]]
amp_dtype = torch.bfloat16
names = [f"ours {b}" for b in OUR_BACKBONES] + list(PEERS)


def sync():
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, n):
    fn()  # warm-up (cudnn autotune, allocator)
    sync()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - start) / n


torch.backends.cudnn.benchmark = True
print(f"**Inference** images/s at {size}x{size}, eval mode, `torch.inference_mode`, random weights, mean of {iters} iterations:\n")
print("| network | " + " | ".join(f"fp32 b{b} | AMP b{b}" for b in batches) + " |")
print("|---|" + "---|" * (2 * len(batches)))
for name in names:
    net = build_network(name).to(device).eval().to(memory_format=torch.channels_last)
    cells = []
    for batch in batches:
        x = torch.randn(batch, 1, size, size, device=device).to(memory_format=torch.channels_last)
        for amp in (False, True):
            def step():
                with torch.inference_mode(), torch.autocast(device, dtype=amp_dtype, enabled=amp):
                    net(x)
            cells.append(f"{batch / timed(step, iters):.1f}")
    print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    del net

print(f"\n**Training** images/s at {size} px, batch {train_batch}, AMP (bf16), DiceCE + Adam, mean of {iters} steps:\n")
print("| network | images/s |\n|---|---|")
from monai.losses import DiceCELoss

loss_fn = DiceCELoss(sigmoid=True)
x = torch.randn(train_batch, 1, size, size, device=device)
y = (torch.rand(train_batch, 1, size, size, device=device) > 0.6).float()
for name in names:
    net = build_network(name).to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=amp_dtype, enabled=True):
            loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()

    print(f"| {name} | {train_batch / timed(step, iters):.1f} |", flush=True)
    del net, opt
print()
EOF

echo "== 3. full ResNet50-UNet training at ${SIZE} px and test Dice" >&2
"$PYTHON" scripts/benchmark_quality.py --backbone resnet50 --work_dir "$OUT_DIR/quality" --report "$REPORT" \
    "${QUALITY_ARGS[@]}" > "$OUT_DIR/quality.log" 2>&1 || { echo "error: quality run failed; see $OUT_DIR/quality.log" >&2; tail -20 "$OUT_DIR/quality.log" >&2; exit 1; }
# Keep only the report and logs: model weights are not needed back from the device machine.
find "$OUT_DIR/quality" -name '*.pt' -delete
echo "== done: $REPORT" >&2
cat "$REPORT"
