#!/usr/bin/env bash
# GPU benchmark for the lent device machine (never run in CI). Budget: under 8 minutes on one H100.
#
#   scripts/gpu_benchmark.sh [--dry-run] [--out DIR] [--data DIR] [--epochs N]
#                            [--precision "fp32 bf16 fp16"] [--train-precision auto]
#
# 1. inference images/s at 512x512 in each --precision (fp32; bf16 or fp16 autocast, the names of
#    `lungseg infer --precision`), batch 1 and 32, our two U-Nets and the peers (MONAI
#    FlexibleUNet-resnet50, segmentation_models_pytorch Unet-resnet50/-vgg16), channels-last;
# 2. training images/s (512 px, batch 16) in each reduced --precision (fp16 with gradient scaling,
#    as MONAI's amp does) for the same networks;
# 3. one full ResNet50-UNet training through the bundle at 512 px on the developers' data
#    (../shared/data/cxr_lung, 0.5/0.25/0.25 split) with train.json's `precision` set to
#    --train-precision (default auto: fp16 AMP on CUDA) and its test Dice at original resolution,
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
PRECISIONS="fp32 bf16 fp16"
TRAIN_PRECISION=auto

while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1; shift ;;
        --out) OUT_DIR="$2"; shift 2 ;;
        --data) DATA_DIR="$2"; shift 2 ;;
        --epochs) EPOCHS="$2"; shift 2 ;;
        --precision) PRECISIONS="$2"; shift 2 ;;
        --train-precision) TRAIN_PRECISION="$2"; shift 2 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "error: unknown argument '$1'; expected --dry-run, --out DIR, --data DIR, --epochs N, --precision LIST or --train-precision P" >&2; exit 2 ;;
    esac
done
for p in $PRECISIONS; do
    case "$p" in fp32|bf16|fp16) ;; *) echo "error: --precision takes fp32, bf16 and fp16, not '$p'" >&2; exit 2 ;; esac
done
case "$TRAIN_PRECISION" in auto|fp32|bf16|fp16) ;; *) echo "error: --train-precision takes auto, fp32, bf16 or fp16, not '$TRAIN_PRECISION'" >&2; exit 2 ;; esac

PYTHON="${PYTHON:-python}"
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT_DIR"
REPORT="$OUT_DIR/gpu_benchmark.md"

if [[ $DRY_RUN == 1 ]]; then
    DEVICE=cpu; SIZE=64; ITERS=1; BATCHES="1 2"; TRAIN_BATCH=2
    QUALITY_ARGS=(--quick --override precision="$TRAIN_PRECISION")
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
                  --override val_batch_size=16 --override num_workers=4 --override precision="$TRAIN_PRECISION")
    DEVICE_NAME="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
fi

{
    echo "### GPU benchmark ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo
    echo "- Device: $DEVICE_NAME"
    echo "- Command: \`scripts/gpu_benchmark.sh $([[ $DRY_RUN == 1 ]] && echo --dry-run) --epochs $EPOCHS --precision \"$PRECISIONS\" --train-precision $TRAIN_PRECISION\`"
    echo
} > "$REPORT"

echo "== 1-2. inference and training speed on $DEVICE" >&2
"$PYTHON" - "$DEVICE" "$SIZE" "$ITERS" "$TRAIN_BATCH" "$PRECISIONS" $BATCHES >> "$REPORT" 2> "$OUT_DIR/speed.log" <<'EOF'
import sys, time
import torch
sys.path.insert(0, "scripts")
from benchmark_speed import OUR_BACKBONES, PEERS, build_network

device, size, iters, train_batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
precisions = sys.argv[5].split()
batches = [int(b) for b in sys.argv[6:]]
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
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
print("| network | " + " | ".join(f"{p} b{b}" for b in batches for p in precisions) + " |")
print("|---|" + "---|" * (len(precisions) * len(batches)))
for name in names:
    net = build_network(name).to(device).eval().to(memory_format=torch.channels_last)
    cells = []
    for batch in batches:
        x = torch.randn(batch, 1, size, size, device=device).to(memory_format=torch.channels_last)
        for precision in precisions:
            dtype = DTYPES[precision]
            def step():
                with torch.inference_mode(), torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
                    net(x)
            cells.append(f"{batch / timed(step, iters):.1f}")
    print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    del net

train_precisions = [p for p in precisions if p != "fp32"] or ["fp32"]
print(f"\n**Training** images/s at {size} px, batch {train_batch}, autocast (fp16 with gradient scaling), DiceCE + Adam, mean of {iters} steps:\n")
print("| network | " + " | ".join(train_precisions) + " |\n|---|" + "---|" * len(train_precisions))
from monai.losses import DiceCELoss

loss_fn = DiceCELoss(sigmoid=True)
x = torch.randn(train_batch, 1, size, size, device=device)
y = (torch.rand(train_batch, 1, size, size, device=device) > 0.6).float()
for name in names:
    cells = []
    for precision in train_precisions:
        dtype = DTYPES[precision]
        net = build_network(name).to(device).train().to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler(device, enabled=dtype is torch.float16)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = loss_fn(net(x).float(), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        cells.append(f"{train_batch / timed(step, iters):.1f}")
        del net, opt
    print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
print()
EOF

echo "== 3. full ResNet50-UNet training at ${SIZE} px and test Dice" >&2
"$PYTHON" scripts/benchmark_quality.py --backbone resnet50 --work_dir "$OUT_DIR/quality" --report "$REPORT" \
    "${QUALITY_ARGS[@]}" > "$OUT_DIR/quality.log" 2>&1 || { echo "error: quality run failed; see $OUT_DIR/quality.log" >&2; tail -20 "$OUT_DIR/quality.log" >&2; exit 1; }
# Keep only the report and logs: model weights are not needed back from the device machine.
find "$OUT_DIR/quality" -name '*.pt' -delete
echo "== done: $REPORT" >&2
cat "$REPORT"
