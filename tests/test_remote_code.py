"""Auto classes, saved folders, and `trust_remote_code=True` loading where `hf_vit_d2l` cannot be imported."""

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    pipeline,
)

import hf_vit_d2l
from hf_vit_d2l import (
    FASHION_MNIST_LABELS,
    ViTD2LConfig,
    ViTD2LForImageClassification,
    ViTD2LImageProcessor,
    ViTD2LModel,
)

CODE_FILES = {"configuration_vit_d2l.py", "modeling_vit_d2l.py", "image_processing_vit_d2l.py"}
PACKAGE_DIR = Path(hf_vit_d2l.__file__).parent
# A folder saved by version 0.1.0 of this package, with the logits it gave for three fixed inputs.
FIXTURE = Path(__file__).parent / "fixtures" / "tiny_v0_1_0"
FIXTURE_EXPECTED = Path(__file__).parent / "fixtures" / "tiny_v0_1_0_expected.pt"


def tiny_config(**overrides):
    kwargs = {
        "image_size": 30,
        "patch_size": 3,
        "hidden_size": 32,
        "num_attention_heads": 4,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
    }
    kwargs.update(overrides)
    return ViTD2LConfig(**kwargs)


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory):
    """A classifier + image processor saved the way training saves them."""
    folder = tmp_path_factory.mktemp("vit_d2l_saved")
    torch.manual_seed(0)
    model = ViTD2LForImageClassification(tiny_config()).eval()
    model.save_pretrained(folder)
    ViTD2LImageProcessor(size={"height": 30, "width": 30}).save_pretrained(folder)
    pixel_values = torch.rand(5, 1, 30, 30, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(pixel_values).logits
    return folder, model, pixel_values, logits


def test_auto_classes_resolve_after_import(tmp_path):
    config = AutoConfig.for_model("vit_d2l", image_size=30, patch_size=3, hidden_size=32, num_attention_heads=4)
    assert type(config) is ViTD2LConfig
    assert type(AutoModel.from_config(config)) is ViTD2LModel
    assert type(AutoModelForImageClassification.from_config(config)) is ViTD2LForImageClassification
    ViTD2LImageProcessor().save_pretrained(tmp_path)
    config.save_pretrained(tmp_path)
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is ViTD2LImageProcessor


def test_saved_folder_contents(saved_folder):
    folder, *_ = saved_folder
    names = set(os.listdir(folder))
    assert "model.safetensors" in names
    assert "config.json" in names
    assert "preprocessor_config.json" in names
    assert names >= CODE_FILES
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))], names
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "vit_d2l"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_vit_d2l.ViTD2LConfig",
        "AutoModel": "modeling_vit_d2l.ViTD2LModel",
        "AutoModelForImageClassification": "modeling_vit_d2l.ViTD2LForImageClassification",
    }
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["auto_map"]["AutoImageProcessor"].endswith("image_processing_vit_d2l.ViTD2LImageProcessor")
    # The shipped code imports only torch, numpy/PIL, the standard library and transformers, plus its siblings.
    allowed = set(sys.stdlib_module_names) | {"torch", "transformers", "huggingface_hub", "numpy", "PIL"}
    for name in CODE_FILES:
        for node in ast.walk(ast.parse((folder / name).read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: only siblings that are shipped too
                    assert node.level == 1, (name, node.level, node.module)
                    assert f"{node.module}.py" in CODE_FILES, (name, node.module)
                    continue
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, (name, roots)


def test_base_model_saved_alone_also_has_full_auto_map(tmp_path):
    ViTD2LModel(tiny_config()).save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForImageClassification"}


def test_in_process_pipeline_returns_fashion_mnist_labels(saved_folder):
    folder, model, *_ = saved_folder
    classify = pipeline("image-classification", model=str(folder), device="cpu")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8), mode="L")
    results = classify(image, top_k=10)
    assert [r["label"] for r in results] != []
    assert {r["label"] for r in results} == set(FASHION_MNIST_LABELS)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert abs(sum(scores) - 1) < 1e-4
    # The pipeline's top score equals the model's softmax on the processor's output.
    processor = ViTD2LImageProcessor(size={"height": 30, "width": 30})
    with torch.no_grad():
        probs = model(**processor(image, return_tensors="pt")).logits.softmax(-1)[0]
    assert results[0]["label"] == FASHION_MNIST_LABELS[int(probs.argmax())]
    assert abs(results[0]["score"] - probs.max().item()) < 1e-5


# Runs in `python -I` (no PYTHONPATH, no user site, no cwd on sys.path) from an empty folder, with a meta-path
# finder that refuses `hf_vit_d2l` even if the package is pip-installed (editable or not).
SUBPROCESS_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hf_vit_d2l" or name.startswith("hf_vit_d2l."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked for this test)")
            return None

    sys.meta_path.insert(0, BlockPackage())
    try:
        import hf_vit_d2l  # noqa
    except ModuleNotFoundError:
        package_importable = False
    else:
        package_importable = True

    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline

    folder, inputs, output = sys.argv[1:4]
    pixel_values = torch.load(inputs, weights_only=True)
    classifier = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    with torch.no_grad():
        logits = classifier(pixel_values).logits
        pooled = base(pixel_values).pooler_output
    classify = pipeline("image-classification", model=folder, trust_remote_code=True, device="cpu")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8), mode="L")
    results = classify(image, top_k=3)
    torch.save({"logits": logits, "pooled": pooled}, output + ".pt")
    json.dump(
        {
            "package_importable": package_importable,
            "loaded_from": [type(classifier).__module__, type(base).__module__, type(processor).__module__],
            "classes": [type(classifier).__name__, type(base).__name__, type(processor).__name__],
            "pipeline": results,
            "rgb_shape": list(processor(image.convert("RGB"), return_tensors="pt").pixel_values.shape),
        },
        open(output, "w"),
    )
    """
)


def run_without_the_package(folder, pixel_values, tmp_path):
    """Run SUBPROCESS_SCRIPT on `folder`; return its JSON result and its tensors."""
    inputs, output = tmp_path / "inputs.pt", tmp_path / "result.json"
    torch.save(pixel_values, inputs)
    workdir = tmp_path / "empty_cwd"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_MODULES_CACHE=str(tmp_path / "modules"),  # fresh copy of the remote code, not a stale cached one
        TRANSFORMERS_VERBOSITY="error",
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", SUBPROCESS_SCRIPT, str(folder), str(inputs), str(output)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(output.read_text())
    assert result["package_importable"] is False
    assert result["classes"] == ["ViTD2LForImageClassification", "ViTD2LModel", "ViTD2LImageProcessor"]
    assert all(module.startswith("transformers_modules.") for module in result["loaded_from"]), result
    labels = [r["label"] for r in result["pipeline"]]
    assert len(labels) == 3
    assert set(labels) <= set(FASHION_MNIST_LABELS)
    assert all(0 <= r["score"] <= 1 for r in result["pipeline"]), result["pipeline"]
    return result, torch.load(str(output) + ".pt", weights_only=True)


def test_trust_remote_code_where_the_package_cannot_be_imported(saved_folder, tmp_path):
    folder, model, pixel_values, logits = saved_folder
    result, tensors = run_without_the_package(folder, pixel_values, tmp_path)
    torch.testing.assert_close(tensors["logits"], logits, rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(tensors["pooled"], model.vit_d2l(pixel_values).pooler_output, rtol=0, atol=1e-6)
    assert result["rgb_shape"] == [1, 1, 30, 30]


def test_v0_1_0_checkpoint_loads_with_the_package():
    expected = torch.load(FIXTURE_EXPECTED, weights_only=True)
    model = AutoModelForImageClassification.from_pretrained(FIXTURE).eval()
    assert type(model) is ViTD2LForImageClassification
    with torch.no_grad():
        torch.testing.assert_close(model(expected["pixel_values"]).logits, expected["logits"], rtol=0, atol=1e-6)


def test_v0_1_0_checkpoint_loads_with_trust_remote_code_running_the_new_files(tmp_path):
    """The fixture with its code files replaced by this version's: what a Hub user gets after a code update."""
    expected = torch.load(FIXTURE_EXPECTED, weights_only=True)
    folder = tmp_path / "checkpoint"
    shutil.copytree(FIXTURE, folder)
    for name in CODE_FILES:
        shutil.copyfile(PACKAGE_DIR / name, folder / name)
    _, tensors = run_without_the_package(folder, expected["pixel_values"], tmp_path)
    torch.testing.assert_close(tensors["logits"], expected["logits"], rtol=0, atol=1e-6)
