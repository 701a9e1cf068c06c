#!/usr/bin/env bash
# Create a virtual environment and install lungseg_monai with every extra (tests, MONAI Label,
# benchmarks). Usage: bash scripts/install.sh [VENV_DIR]   (default: .venv)
#
# Why not a bare `pip install -e .[all]`: MONAI Label needs sam2, which ships only as a source
# package whose build requires torch. With build isolation pip would fetch a second, multi-GB
# torch just to build it; instead torch is installed first and sam2 is built against it
# (SAM2_BUILD_CUDA=0: its optional CUDA kernels are not needed here).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
python="${PYTHON:-python3.11}"

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" "setuptools>=68" wheel
SAM2_BUILD_CUDA=0 "$venv/bin/python" -m pip install --quiet --no-build-isolation -e ".[all]"
"$venv/bin/python" -c "import lungseg_monai, monai, monailabel; print('lungseg_monai', lungseg_monai.__version__, 'monai', monai.__version__, 'monailabel', monailabel.__version__)"
