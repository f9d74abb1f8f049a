#!/usr/bin/env bash
# Installs hf-vit-d2l and what it needs on a fresh machine (idempotent; safe to re-run).
#   bash scripts/setup.sh          # the package, its runtime deps and the dev tools (pytest, ruff, tensorboard)
#
# 1. torch: a machine without torch gets torch==2.13.0 first (a CPU build where one is on local disk); the project
#    itself asks only for torch>=2.4, so an existing (e.g. CUDA) build is kept.
# 2. `pip install -e .[dev]`.
# 3. The real Fashion-MNIST: Debian's `dataset-fashion-mnist` (the four IDX files in
#    /usr/share/datasets/fashion-mnist) when running as root on a Debian-based system and the files are absent.
#    Users with Hub access do not need it (the training script loads zalando-datasets/fashion_mnist).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    echo "[setup] torch not found: installing torch==2.13.0"
    "$PYTHON" -m pip install -q "torch==2.13.0"
fi
# torchvision/timm break transformers' image code beside this torch (see README, "Known traps").
"$PYTHON" -m pip install -q -e ".[dev]"

DATA_DIR=/usr/share/datasets/fashion-mnist
if [ ! -f "$DATA_DIR/train-images-idx3-ubyte.gz" ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "[setup] installing Debian's dataset-fashion-mnist (the real Fashion-MNIST IDX files)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "[setup] Fashion-MNIST not found locally. With Hub access nothing is needed; otherwise run:"
        echo "        sudo apt-get install -y dataset-fashion-mnist"
    fi
fi
"$PYTHON" -c "import hf_vit_d2l, torch, transformers; print('[setup] hf_vit_d2l', hf_vit_d2l.__version__, \
'| torch', torch.__version__, '| transformers', transformers.__version__)"
