#!/usr/bin/env bash
# Packaging check: build the wheel, check that it ships the library only, install it (not editable) into a clean
# venv and use it from a folder outside the repository: Auto classes, pipeline, the predict CLI, remote code in a
# process that cannot import hf_vit_d2l, then the console scripts: one tiny epoch of the default recipe and of
# --recipe quick, evaluation, predict and a push dry run. pip's download cache is kept between runs (~/.cache/pip).
#   bash .ci/packaging_check.sh
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

python3 -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
"$PY" -m pip install --quiet torch==2.13.0  # first, so the CPU wheel (not a CUDA one) satisfies the requirement
"$PY" -m pip wheel --quiet --no-deps --wheel-dir "$WORK/dist" "$REPO"
"$PY" -m pip install --quiet "$WORK"/dist/hf_vit_d2l-*.whl

mkdir "$WORK/outside"
cd "$WORK/outside"
export HF_HUB_OFFLINE=1 PYTHONPATH=  # no checkout on the path: only the installed wheel
"$PY" - "$WORK"/dist/hf_vit_d2l-*.whl <<'EOF'
import gzip
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# The wheel holds the package (and its metadata) only: no tests, scripts, benchmarks or dev tooling.
names = zipfile.ZipFile(sys.argv[1]).namelist()
top = {name.split("/")[0] for name in names}
assert top == {"hf_vit_d2l", *(t for t in top if t.endswith(".dist-info"))}, sorted(top)
dev_tooling = [n for n in names if Path(n).stem in {"benchmark", "sweep", "fast", "gpu_book_run", "d2l_reference"}]
assert not dev_tooling, dev_tooling
assert {"hf_vit_d2l/templates/model_card.md", "hf_vit_d2l/templates/stock_vit_card.md"} <= set(names), names
licences = [n for n in names if "/licenses/" in n or n.endswith(("/LICENSE", "/NOTICE"))]
print("wheel:", len(names), "files; licence files:", licences)

import hf_vit_d2l  # noqa: E402
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline  # noqa: E402

assert "site-packages" in hf_vit_d2l.__file__, hf_vit_d2l.__file__

# A real image: the first Fashion-MNIST test image when the Debian data is installed, else a fixed pattern.
idx = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
if idx.exists():
    pixels = np.frombuffer(gzip.decompress(idx.read_bytes())[16 : 16 + 784], dtype=np.uint8).reshape(28, 28)
else:
    pixels = (np.add.outer(np.arange(28), np.arange(28)) * 4).astype(np.uint8)
image = Image.fromarray(pixels, mode="L")
image.save("image.png")

torch.manual_seed(0)
config = hf_vit_d2l.ViTD2LConfig(
    image_size=28, patch_size=7, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
    id2label=dict(enumerate(hf_vit_d2l.FASHION_MNIST_LABELS)),
)
model = hf_vit_d2l.ViTD2LForImageClassification(config).eval()
processor = hf_vit_d2l.ViTD2LImageProcessor(size={"height": 28, "width": 28})
model.save_pretrained("model")
processor.save_pretrained("model")
with torch.no_grad():
    expected = model(**processor(image, return_tensors="pt")).logits[0]
probs = expected.softmax(-1)
best = int(probs.argmax())

loaded = AutoModelForImageClassification.from_pretrained("model").eval()
with torch.no_grad():
    logits = loaded(**AutoImageProcessor.from_pretrained("model")(image, return_tensors="pt")).logits[0]
torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)

# trust_remote_code=False: the installed classes serve the folder (and the pipeline's video-processor probe does
# not stop to ask about the folder's code files).
classifier = pipeline("image-classification", model="model", device="cpu", trust_remote_code=False)
assert type(classifier.model) is hf_vit_d2l.ViTD2LForImageClassification
top = classifier(image)[0]
assert top["label"] == config.id2label[best] and abs(top["score"] - probs[best].item()) < 1e-5, (top, best)

predict = [sys.executable, "-m", "hf_vit_d2l.predict", "image.png", "--model", "model", "--top_k", "2", "--json"]
cli = subprocess.run([*predict, "--no_progress"], capture_output=True, text=True, check=True)
first = json.loads(cli.stdout)[0]["predictions"][0]
assert first["label"] == config.id2label[best] and abs(first["score"] - probs[best].item()) < 1e-5, first


# Remote code: a process where even an importable hf_vit_d2l is blocked loads the folder's own code files.
REMOTE = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "hf_vit_d2l":
            raise ImportError("hf_vit_d2l is blocked in this process")
sys.meta_path.insert(0, Block())
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained("model", trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained("model", trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
with torch.no_grad():
    print(model(**processor(Image.open("image.png"), return_tensors="pt")).logits[0].tolist())
"""
remote = subprocess.run([sys.executable, "-c", REMOTE], capture_output=True, text=True)
assert remote.returncode == 0, remote.stderr[-3000:]
torch.testing.assert_close(torch.tensor(json.loads(remote.stdout.strip().splitlines()[-1])), expected, rtol=0, atol=1e-6)
print(f"packaging check passed: top label {config.id2label[best]!r} p={probs[best]:.4f} from the installed wheel, "
      "the pipeline, the predict CLI and remote code")
EOF

# The console scripts, as a user without a clone runs them (the recipes ship inside the package).
BIN="$WORK/venv/bin"
TINY="image_size=28,patch_size=7,hidden_size=32,intermediate_size=64,num_attention_heads=2,num_hidden_layers=1"
SLICE=(--max_train_samples 256 --max_eval_samples 128 --num_train_epochs 1 --config_overrides "$TINY")
"$BIN/vit-d2l-train" --output_dir runs/book "${SLICE[@]}"
"$BIN/vit-d2l-train" --recipe quick --output_dir runs/quick "${SLICE[@]}"
"$BIN/vit-d2l-evaluate" --model_name_or_path runs/quick --max_eval_samples 128
"$BIN/vit-d2l-predict" image.png --model runs/quick --top_k 1 --no_progress
"$BIN/vit-d2l-push" runs/quick --repo_id USER/vit-d2l-quick --dry_run staged
test -f staged/README.md && test -f staged/model.safetensors
"$BIN/accelerate" launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
    -m hf_vit_d2l.training --output_dir runs/accelerate "${SLICE[@]}" --max_steps 2
echo "packaging check passed: the console scripts train (book and quick recipes, and under accelerate launch -m), evaluate, predict and stage a push"
