#!/usr/bin/env bash
# Create a virtual environment and install lungseg_monai with every extra (training, tests, PACS,
# MONAI Label, Ray, benchmarks, docs) at the versions of constraints.txt.
# Usage: bash scripts/install.sh [VENV_DIR]   (default: .venv)
#
# Why not a bare `pip install -e .[all]`: MONAI Label needs sam2, which ships only as a source
# package whose build requires torch. With build isolation pip would fetch a second, multi-GB
# torch just to build it; instead torch is installed first and sam2 is built against it
# (SAM2_BUILD_CUDA=0: its optional CUDA kernels are not needed here).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
python="${PYTHON:-python3.11}"

# System packages the PACS and browser tests use: Orthanc with its DICOMweb plugin, Chromium and
# its WebDriver (Debian). Installed with apt-get when this runs as root (or with password-less
# sudo), and said so before; otherwise those tests skip with a reason. LUNGSEG_NO_APT=1 leaves the
# system alone.
system_packages=()
command -v Orthanc >/dev/null 2>&1 || system_packages+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || system_packages+=(orthanc-dicomweb)
command -v chromium >/dev/null 2>&1 || system_packages+=(chromium)
command -v chromedriver >/dev/null 2>&1 || system_packages+=(chromium-driver)
if [ "${#system_packages[@]}" -eq 0 ]; then
    echo "[1/3] Orthanc and Chromium (PACS and browser tests): already installed"
fi
if [ "${#system_packages[@]}" -gt 0 ] && [ "${LUNGSEG_NO_APT:-0}" != 1 ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then apt=(); else apt=(sudo -n); fi
    if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then
        echo "[1/3] system-wide, with apt-get: ${system_packages[*]} (for the PACS and browser tests;" \
            "LUNGSEG_NO_APT=1 skips this)"
        "${apt[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" apt-get install -y -qq --no-install-recommends "${system_packages[@]}" >/dev/null
    else
        echo "note: ${system_packages[*]} not installed (needs apt-get as root); the PACS and browser tests will skip"
    fi
fi

# Every install goes through constraints.txt: the exact versions the tests ran with.
echo "[2/3] $venv: torch and torchvision as constraints.txt pins them (a few GB, about a minute from a local cache)"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet -c constraints.txt torch torchvision "setuptools>=68" wheel
echo "[3/3] $venv: lungseg_monai with every extra (train, test, pacs, label, ray, bench, docs)"
SAM2_BUILD_CUDA=0 "$venv/bin/python" -m pip install --quiet --no-build-isolation -c constraints.txt -e ".[all]"
"$venv/bin/python" -c "import lungseg_monai, monai, monailabel; print('lungseg_monai', lungseg_monai.__version__, 'monai', monai.__version__, 'monailabel', monailabel.__version__)"
