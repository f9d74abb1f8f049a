#!/usr/bin/env bash
# Installs hf-vit-d2l and what it needs on a fresh machine (idempotent; safe to re-run).
#   bash scripts/setup.sh          # the package, its runtime deps, the demo (gradio) and the dev tools
#
# 1. torch: a machine without torch gets torch==2.13.0 first (a CPU build where one is on local disk); the project
#    itself asks only for torch>=2.4, so an existing (e.g. CUDA) build is kept.
# 2. `pip install -e .[dev,demo]`.
# 3. Debian's `dataset-fashion-mnist` (the four IDX files in /usr/share/datasets/fashion-mnist) and `chromium` +
#    `chromium-driver`, when running as root on a Debian-based system and they are absent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    echo "[setup] torch not found: installing torch==2.13.0"
    "$PYTHON" -m pip install -q "torch==2.13.0"
fi
# torchvision/timm break transformers' image code beside this torch (see docs/development.md#setup).
"$PYTHON" -m pip install -q -e ".[dev,demo]"
# olah, a self-hosted Hub server the tests run on loopback, in a venv of its own: its pins (psutil<6) clash with
# accelerate's. The venv is rebuilt when the checkout moves (venv scripts keep absolute paths).
.venv-olah/bin/python -c "import olah" 2>/dev/null || {
    "$PYTHON" -m venv --clear .venv-olah && .venv-olah/bin/python -m pip install -q "olah==0.5.4"
}

# Debian packages: the real Fashion-MNIST (used when the Hub is out of reach) and Chromium with its WebDriver (the
# demo's browser test).
need=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "[setup] installing Debian's ${need[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "[setup] missing: ${need[*]}. Run: sudo apt-get install ${need[*]}"
        echo "        (with Hub access Fashion-MNIST is downloaded instead; without Chromium the browser test skips)"
    fi
fi
"$PYTHON" -c "import hf_vit_d2l, torch, transformers; print('[setup] hf_vit_d2l', hf_vit_d2l.__version__, \
'| torch', torch.__version__, '| transformers', transformers.__version__)"
