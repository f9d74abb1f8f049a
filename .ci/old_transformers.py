"""The shipped files (config, model, image processor) on an older transformers, loaded as remote code.

Run by .ci/old_transformers.sh in a venv with that transformers; imports nothing from the hf_vit_d2l package, only
the three files next to the v0.1.0 test checkpoint (replaced by this checkout's), through `trust_remote_code=True`.
"""

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

ROOT = Path(__file__).resolve().parents[1]
FILES = ("configuration_vit_d2l.py", "modeling_vit_d2l.py", "image_processing_vit_d2l.py")

folder = Path(tempfile.mkdtemp()) / "checkpoint"
shutil.copytree(ROOT / "tests" / "fixtures" / "tiny_v0_1_0", folder)
for name in FILES:
    shutil.copyfile(ROOT / "hf_vit_d2l" / name, folder / name)
expected = torch.load(ROOT / "tests" / "fixtures" / "tiny_v0_1_0_expected.pt", weights_only=True)

# Checkpoint of 0.1.0: same logits, eager and sdpa.
for implementation in ("eager", "sdpa"):
    model = AutoModelForImageClassification.from_pretrained(
        folder, trust_remote_code=True, attn_implementation=implementation
    ).eval()
    assert model.config._attn_implementation == implementation
    with torch.no_grad():
        torch.testing.assert_close(model(expected["pixel_values"]).logits, expected["logits"], rtol=0, atol=1e-5)
assert type(AutoModel.from_pretrained(folder, trust_remote_code=True)).__name__ == "ViTD2LModel"

# Config: aliases, validation on construction and on assignment.
config_class = type(AutoConfig.from_pretrained(folder, trust_remote_code=True))
assert config_class(num_hiddens=64, num_heads=4).hidden_size == 64
for bad in (
    {"hidden_size": 64, "num_hiddens": 128},
    {"pooling": "max"},
    {"hidden_size": 30, "num_attention_heads": 4},
):
    try:
        config_class(**bad)
    except Exception as error:  # noqa: BLE001 - ValueError or huggingface_hub's StrictDataclassError
        assert "Error" in type(error).__name__, error
    else:
        raise AssertionError(f"no error for {bad}")
config = config_class(image_size=30, patch_size=3, hidden_size=32, num_attention_heads=4, intermediate_size=37)
try:
    config.pooling = "bogus"
except Exception as error:  # noqa: BLE001
    assert "pooling" in str(error)
else:
    raise AssertionError("no error on assignment")

# Training step: loss per problem type, gradient checkpointing, bad label.
model_class = type(model)
model = model_class(config).train()
pixel_values, labels = torch.rand(4, 1, 30, 30), torch.tensor([0, 3, 9, 2])
loss = model(pixel_values, labels=labels).loss
assert config.problem_type == "single_label_classification" and loss.item() > 0
model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
model(pixel_values, labels=labels).loss.backward()
assert all(layer.gradient_checkpointing for layer in model.vit_d2l.encoder.layer)
try:
    model(pixel_values, labels=torch.tensor([0, 3, 10, 2]))
except ValueError as error:
    assert "labels must lie in [0, 9]" in str(error)
else:
    raise AssertionError("no error for label 10")

# Image processor: the PIL rule and arrays.
sys.path.insert(0, str(folder))
from image_processing_vit_d2l import ViTD2LImageProcessor, conversion_loses_information  # noqa: E402

processor = ViTD2LImageProcessor(size={"height": 28, "width": 28})
rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 128))
out = processor(rgba, return_tensors="pt").pixel_values
assert out.shape == (1, 1, 28, 28) and torch.allclose(out, torch.full_like(out, 76 / 255), atol=1e-6)
torch.testing.assert_close(processor(rgba.convert("RGB"), return_tensors="pt").pixel_values, out)
assert "transparency" in conversion_loses_information(rgba)
batch = processor(np.zeros((2, 28, 28, 3), np.uint8), return_tensors="pt").pixel_values
assert batch.shape == (2, 1, 28, 28)
print(f"shipped files OK on transformers {transformers.__version__}, torch {torch.__version__}")
