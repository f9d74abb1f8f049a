"""Model card (rendered from the template), FLOPs, and Hub staging/push, on a tiny real model and real test images.

The training folder is fabricated here (tiny model saved with `save_pretrained`, image processor, JSON files with the
keys scripts/train.py and scripts/run_evaluation.py write, small PNGs), so these tests do not depend on training.
Its evaluation figures are computed from the tiny model's real predictions on real Fashion-MNIST test images.
"""

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from hf_vit_d2l import (
    FASHION_MNIST_LABELS,
    ViTD2LConfig,
    ViTD2LForImageClassification,
    ViTD2LImageProcessor,
    get_preset,
)
from hf_vit_d2l.hub import (
    HubPushError,
    RunFolderError,
    build_model_card,
    card_fields,
    check_folder_complete,
    flops_per_image,
    stage_for_upload,
)

NOT_MEASURED = "not measured"  # what the card writes for a figure the folder lacks
REQUIRED_SECTIONS = (
    "## Model description",
    "## Intended uses and limitations",
    "## Training data and procedure",
    "## Evaluation",
    "## How to use",
    "## Licences and citation",
)

DATA_DIR = "/usr/share/datasets/fashion-mnist"
HAVE_DATA = os.path.isfile(os.path.join(DATA_DIR, "t10k-images-idx3-ubyte.gz"))
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {
    "image_size": 28,
    "patch_size": 7,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 1,
}


def _test_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    if not HAVE_DATA:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n)
    with gzip.open(os.path.join(DATA_DIR, "t10k-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    with gzip.open(os.path.join(DATA_DIR, "t10k-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:n].astype(np.int64)
    return images, labels


def make_run_folder(path, with_eval: bool = True, with_results: bool = True) -> str:
    """A training output folder as scripts/train.py (+ scripts/run_evaluation.py) leave it, from a tiny real model."""
    torch.manual_seed(0)
    model = ViTD2LForImageClassification(ViTD2LConfig(**TINY)).eval()
    processor = ViTD2LImageProcessor(size={"height": 28, "width": 28})
    model.save_pretrained(path)
    processor.save_pretrained(path)
    images, labels = _test_images(200)
    with torch.no_grad():
        pixel_values = processor(images=[Image.fromarray(i, "L") for i in images], return_tensors="pt")["pixel_values"]
        logits = model(pixel_values=pixel_values).logits
    loss = float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels)))
    predicted = logits.argmax(-1).numpy()
    accuracy = float((predicted == labels).mean())
    confusion = np.zeros((10, 10), dtype=int)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {
        name: float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else 0.0
        for i, name in enumerate(FASHION_MNIST_LABELS)
    }

    def dump(name, obj):
        with open(os.path.join(path, name), "w") as f:
            json.dump(obj, f)

    if with_results:
        dump(
            "all_results.json",
            {
                "epoch": 2.0,
                "eval_accuracy": accuracy,
                "eval_loss": loss,
                "eval_runtime": 0.5,
                "train_loss": 2.2,
                "train_runtime": 12.34,
                "train_samples_per_second": 81.0,
                "train_steps_per_second": 5.1,
            },
        )
        dump(
            "run_info.json",
            {
                "recipe": "book",
                "command": "python scripts/train.py --recipe book --max_train_samples 500",
                "hardware": "2 CPU cores (test fixture)",
                "seed": 42,
                "num_processes": 1,
                "global_batch_size": 128,
                "dataset": "fashion_mnist (local IDX files)",
                "dataset_id": "zalando-datasets/fashion_mnist",
                "train_samples": 500,
                "eval_samples": 200,
                "eval_split": "test",
                "training_args": {
                    "learning_rate": 0.1,
                    "optim": "sgd",
                    "max_steps": -1,
                    "num_train_epochs": 2,
                    "hub_token": "<HUB_TOKEN>",  # TrainingArguments.to_dict's mask of every *_token
                },
            },
        )
        dump(
            "trainer_state.json",
            {
                "global_step": 8,
                "num_train_epochs": 2,
                "train_batch_size": 128,
                "log_history": [
                    {"epoch": 1.0, "loss": 2.31, "learning_rate": 0.1, "step": 4},
                    {"epoch": 1.0, "eval_loss": 2.29, "eval_accuracy": 0.11, "step": 4},
                    {"epoch": 2.0, "loss": 2.2, "learning_rate": 0.1, "step": 8},
                    {"epoch": 2.0, "eval_loss": loss, "eval_accuracy": accuracy, "step": 8},
                ],
            },
        )
        Image.new("RGB", (64, 48), (255, 255, 255)).save(os.path.join(path, "training_curves.png"))
    if with_eval:
        dump(
            "eval_results.json",
            {
                "accuracy": accuracy,
                "inverted_accuracy": 0.1234,
                "loss": loss,
                "num_samples": len(labels),
                "per_class_accuracy": per_class,
                "confusion_matrix": confusion.tolist(),
                "labels": FASHION_MNIST_LABELS,
            },
        )
        Image.new("RGB", (64, 64), (0, 0, 255)).save(os.path.join(path, "confusion_matrix.png"))
    return str(path)


def _tree_digest(folder) -> dict[str, str]:
    digests = {}
    for root, _, names in os.walk(folder):
        for name in names:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                digests[os.path.relpath(full, folder)] = hashlib.sha256(f.read()).hexdigest()
    return digests


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    return make_run_folder(tmp_path_factory.mktemp("run") / "vit_d2l_tiny")


# ---------------------------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------------------------


def test_flops_tiny_config_equals_hand_count():
    config = ViTD2LConfig(**TINY)  # 16 patches, 17 tokens, d=32, m=37, 1 block, 10 classes
    hand = (
        2 * 16 * (1 * 7 * 7) * 32  # patch embedding
        + 2 * 4 * 17 * 32 * 32  # W_q, W_k, W_v, W_o
        + 2 * 2 * 17 * 17 * 32  # Q K^T and A V
        + 2 * 2 * 17 * 32 * 37  # MLP
        + 2 * 32 * 10  # head
    )
    assert hand == 307_584
    assert flops_per_image(config) == hand


@pytest.mark.parametrize("config", [ViTD2LConfig(**TINY), get_preset("vit_d2l_fashion_mnist")], ids=["tiny", "book"])
def test_flops_match_torch_flop_counter(config):
    """torch's FlopCounterMode counts exactly the conv/linear/matmul FLOPs of the eager forward."""
    model = ViTD2LForImageClassification(config).eval()
    model.set_attn_implementation("eager")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(pixel_values=torch.randn(3, config.num_channels, config.image_size, config.image_size))
    assert counter.get_total_flops() == 3 * flops_per_image(config)


def test_flops_book_config_is_about_half_a_gflop():
    config = get_preset("vit_d2l_fashion_mnist")
    assert flops_per_image(config) == 480_622_592


# ---------------------------------------------------------------------------------------------------------------
# The card: the fields Python computes, and a template that only places them
# ---------------------------------------------------------------------------------------------------------------

TEMPLATE = os.path.join(REPO_ROOT, "hf_vit_d2l", "templates", "model_card.md")
PLACEHOLDER = re.compile(r"\{\{ *([\w.]+) *\}\}")


def _rows(table: str) -> list[list[str]]:
    """The cells of Markdown table rows."""
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()]


def test_template_is_prose_with_placeholders_and_simple_ifs(run_folder):
    """Every Jinja tag is `{{ name }}` or a simple `{% if name %}` / else / endif on its own line."""
    with open(TEMPLATE) as f:
        template = re.sub(r"\{#.*?#\}", "", f.read(), flags=re.DOTALL)  # Jinja comments
    tag_lines = [line for line in template.splitlines() if "{%" in line]
    assert tag_lines, "the template has no {% if %} blocks at all"
    for line in tag_lines:
        assert re.fullmatch(r"\{%-? (if \w+|else|endif) %\}", line), line
    expressions = re.findall(r"\{\{(.*?)\}\}", template)
    assert expressions, "the template has no placeholders"
    for expression in expressions:
        assert re.fullmatch(r" [\w.]+ ", expression), expression
    used = {name.split(".")[0] for name in PLACEHOLDER.findall(template)}
    used |= set(re.findall(r"\{%-? if (\w+) %\}", template))
    field_names = set(card_fields(run_folder))
    assert used - {"card_data"} <= field_names, f"not computed by card_fields: {used - field_names}"
    assert field_names - {"metadata"} <= used, f"computed but never shown: {field_names - used - {'metadata'}}"


def test_card_metadata(run_folder, tmp_path):
    card = build_model_card(run_folder, repo_id="someone/vit-d2l-tiny")
    path = tmp_path / "README.md"
    card.save(path)
    data = ModelCard.load(path).data  # a round trip through the Hub's own parser
    with open(os.path.join(run_folder, "eval_results.json")) as f:
        eval_json = json.load(f)

    assert data.library_name == "transformers"
    assert data.license == "apache-2.0"
    assert data.pipeline_tag == "image-classification"
    assert data.datasets == ["zalando-datasets/fashion_mnist"]
    assert data.metrics == ["accuracy"]
    assert set(data.tags) == {"image-classification", "vision", "vit", "d2l", "fashion-mnist"}
    [result] = data.eval_results
    assert result.metric_value == eval_json["accuracy"]  # exactly the run's value
    assert result.metric_type == "accuracy"
    assert result.dataset_type == "zalando-datasets/fashion_mnist"
    assert result.dataset_split == "test"
    assert result.task_type == "image-classification"
    model_index = data.to_dict()["model-index"]
    assert model_index[0]["results"][0]["metrics"][0]["value"] == eval_json["accuracy"]


def test_card_fields_of_a_full_run(run_folder):
    fields = card_fields(run_folder, repo_id="someone/vit-d2l-tiny")
    with open(os.path.join(run_folder, "eval_results.json")) as f:
        eval_json = json.load(f)
    model = ViTD2LForImageClassification.from_pretrained(run_folder)
    flops = flops_per_image(model.config)

    assert fields["model_name"] == "vit-d2l-tiny"
    assert fields["repo_id"] == "someone/vit-d2l-tiny"
    assert fields["revision"] == "main"
    assert fields["training_data"] == "Fashion-MNIST"
    assert fields["data_source"] == "[Fashion-MNIST](https://huggingface.co/datasets/zalando-datasets/fashion_mnist)"
    # The test evaluation: eval_results.json of scripts/run_evaluation.py
    assert fields["accuracy"] == f"{100 * eval_json['accuracy']:.2f}%"
    assert fields["accuracy_source"] == "eval_results.json"
    assert fields["test_images"] == "200 test images"
    assert fields["test_loss"] == f"{eval_json['loss']:.4f}"
    per_class = [[name, f"{100 * eval_json['per_class_accuracy'][name]:.2f}%"] for name in FASHION_MNIST_LABELS]
    assert _rows(fields["per_class_rows"]) == per_class
    assert fields["confusion_matrix"] is True
    assert fields["inverted_accuracy"] == "12.34%"
    assert fields["upright_accuracy"] == fields["accuracy"]
    assert fields["inverted_images"] == "200 test images"
    # The model
    assert fields["pooled"] == "`<cls>` token"
    assert fields["num_tokens"] == 17
    assert fields["parameters"] == f"{sum(p.numel() for p in model.parameters()):,}"
    assert fields["forward_flops"] == f"{flops:,} ({flops / 1e6:.3g} MFLOP)"
    assert fields["training_flops"] == f"{3 * flops:,} ({3 * flops / 1e6:.3g} MFLOP)"
    assert fields["differs_from_book"] is False
    assert fields["test_time_flip"] is False
    assert fields["normalisation"] == "no normalisation"
    # The run
    assert fields["run_dataset"] == "fashion_mnist (local IDX files)"
    assert fields["train_samples"] == "500"
    assert fields["eval_samples"] == "200"
    assert fields["eval_split"] == "test"
    assert fields["evaluated"] == "after each epoch"
    assert fields["train_loss_rows"] == "", "the per-epoch table has the evaluations"
    assert fields["recipe"] == "book"
    assert fields["hardware"] == "2 CPU cores (test fixture)"
    assert fields["num_processes"] == "1"
    assert fields["training_time"] == "12.3 s, 81.0 samples/s, 2.0 epochs"
    assert fields["command"] == "python scripts/train.py --recipe book --max_train_samples 500"
    hyperparameters = dict(_rows(fields["hyperparameter_rows"]))
    assert hyperparameters["learning_rate"] == "0.1"
    assert hyperparameters["optim"] == "sgd"
    assert "max_steps" not in hyperparameters, "-1 means unset"
    assert hyperparameters["seed"] == "42"
    epochs = _rows(fields["epoch_rows"])
    assert epochs[0] == ["1.0", "2.3100", "2.2900", "11.00%"]
    assert epochs[1] == ["2.0", "2.2000", fields["test_loss"], fields["accuracy"]]
    assert fields["training_curves"] is True


def test_rendered_card_shows_every_field(run_folder):
    fields = card_fields(run_folder, repo_id="someone/vit-d2l-tiny", stock_vit_repo_id="someone/vit-d2l-stock")
    text = build_model_card(run_folder, repo_id="someone/vit-d2l-tiny", stock_vit_repo_id="someone/vit-d2l-stock").text
    for name, value in fields.items():
        if isinstance(value, str) and value:
            assert value in text, f"field {name} = {value!r} is not in the card"
    for section in REQUIRED_SECTIONS:
        assert section in text
    assert "(confusion_matrix.png)" in text
    assert "(training_curves.png)" in text
    assert "None" not in text
    for line in text.splitlines():  # every remote-code snippet pins a revision
        if ("trust_remote_code=True" in line and "from_pretrained(" in line) or "pipeline(" in line:
            assert "revision=" in line, line
    for citation in ("@book{zhang2023dive", "@inproceedings{dosovitskiy2021image", "@article{xiao2017fashionmnist"):
        assert citation in text


def test_card_says_not_measured_when_figures_are_missing(tmp_path):
    folder = make_run_folder(tmp_path / "bare", with_eval=False, with_results=False)
    fields = card_fields(folder)
    assert fields["metadata"].eval_results is None
    assert "model-index" not in fields["metadata"].to_dict()
    assert fields["metadata"].datasets is None  # no run_info.json: the dataset is not known
    assert fields["accuracy"] == NOT_MEASURED
    assert fields["accuracy_source"] is None
    assert fields["per_class_rows"] == ""
    assert fields["confusion_matrix"] is False
    assert fields["inverted_accuracy"] is None
    assert fields["training_time"] == NOT_MEASURED
    assert fields["recipe"] == NOT_MEASURED
    assert fields["command"] is None
    assert fields["hyperparameter_rows"] == ""
    assert fields["epoch_rows"] == ""
    assert fields["training_curves"] is False
    assert fields["training_data"] == "a local image folder"
    assert fields["repo_id"] == "YOUR_USER/vit-d2l"
    text = build_model_card(folder).text
    for section in REQUIRED_SECTIONS:
        assert section in text
    assert "| class | accuracy |" not in text
    assert "confusion_matrix.png" not in text
    assert NOT_MEASURED in text


def test_card_fields_of_the_models_options(tmp_path):
    folder = make_run_folder(tmp_path / "options", with_eval=False, with_results=False)
    assert "test_time_flip=True" not in build_model_card(folder).text  # the book's one pass: nothing to say
    config = ViTD2LConfig.from_pretrained(folder)
    config.test_time_flip = True
    config.pooling = "mean"
    config.save_pretrained(folder)
    processor = json.loads((tmp_path / "options" / "preprocessor_config.json").read_text())
    processor.update(do_normalize=True, image_mean=[0.5], image_std=[0.25])
    (tmp_path / "options" / "preprocessor_config.json").write_text(json.dumps(processor))
    fields = card_fields(folder)
    assert fields["test_time_flip"] is True
    assert fields["differs_from_book"] is True
    assert fields["pooled"] == "mean of the patch tokens"
    assert fields["normalisation"] == "normalised with mean [0.5] and std [0.25]"
    text = build_model_card(folder).text
    assert "test_time_flip=True" in text
    assert "pooling `mean`" in text


def test_card_of_a_run_evaluated_once_after_training_with_ema(tmp_path):
    """The hour recipe's shape: eval_strategy "no" (the test split read once, after training) and EMA weights."""
    folder = make_run_folder(tmp_path / "once")
    info = json.loads((tmp_path / "once" / "run_info.json").read_text())
    info["training_args"]["eval_strategy"] = "no"
    (tmp_path / "once" / "run_info.json").write_text(json.dumps({**info, "ema_decay": 0.9995}))
    state = json.loads((tmp_path / "once" / "trainer_state.json").read_text())
    state["log_history"] = [entry for entry in state["log_history"] if "loss" in entry]
    (tmp_path / "once" / "trainer_state.json").write_text(json.dumps(state))
    fields = card_fields(folder)
    assert fields["evaluated"] == "once, after training", "the card must not claim a per-epoch evaluation"
    assert fields["epoch_rows"] == "", "no evaluation was logged during training"
    assert _rows(fields["train_loss_rows"]) == [["1.0", "2.3100"], ["2.0", "2.2000"]], "train loss per epoch"
    assert dict(_rows(fields["hyperparameter_rows"]))["ema_decay"] == "0.9995", "EMA decay in the hyperparameters"
    text = build_model_card(folder).text
    assert "samples evaluated once, after training: 200 (test split)" in text, "evaluation schedule sentence"
    assert "| epoch | train loss (last logged) |\n" in text, "train-loss-only table header"
    assert "exponential moving average" in text, "the card must say the weights are EMA-averaged"
    assert "Per-epoch figures: not measured" not in text, "trainer_state.json exists"
    assert "after each epoch" not in text, "the run was evaluated once"
    assert "exponential moving average" not in build_model_card(make_run_folder(tmp_path / "each")).text, "no EMA"
    info["training_args"]["eval_strategy"] = "steps"
    (tmp_path / "once" / "run_info.json").write_text(json.dumps(info))
    assert card_fields(folder)["evaluated"] == "during training", "eval_strategy steps"


def test_card_inverted_accuracy_without_a_sample_count(tmp_path):
    folder = make_run_folder(tmp_path / "old_eval")
    results = json.loads((tmp_path / "old_eval" / "eval_results.json").read_text())
    del results["num_samples"]
    (tmp_path / "old_eval" / "eval_results.json").write_text(json.dumps(results))
    fields = card_fields(folder)
    assert fields["inverted_accuracy"] == "12.34%"
    assert fields["inverted_images"] == "test images"
    assert fields["inverted_images"] in build_model_card(folder).text


def test_card_falls_back_to_all_results_accuracy(tmp_path):
    """Before scripts/run_evaluation.py runs, eval_results.json is the Trainer's (eval_-prefixed keys) or absent."""
    folder = make_run_folder(tmp_path / "noeval", with_eval=True)
    os.remove(os.path.join(folder, "confusion_matrix.png"))
    with open(os.path.join(folder, "all_results.json")) as f:
        all_results = json.load(f)
    with open(os.path.join(folder, "eval_results.json"), "w") as f:
        json.dump({"epoch": 2.0, "eval_accuracy": all_results["eval_accuracy"], "eval_loss": 2.3}, f)
    for remove in (False, True):
        if remove:
            os.remove(os.path.join(folder, "eval_results.json"))
        fields = card_fields(folder)
        assert fields["metadata"].eval_results[0].metric_value == all_results["eval_accuracy"], f"removed: {remove}"
        assert fields["accuracy_source"] == "all_results.json", f"removed: {remove}"
        assert fields["test_loss"] == f"{all_results['eval_loss']:.4f}", f"removed: {remove}"
        assert fields["per_class_rows"] == "", f"removed: {remove}"
        assert fields["confusion_matrix"] is False, f"removed: {remove}"


def test_card_dataset_is_the_runs_dataset(tmp_path):
    folder = make_run_folder(tmp_path / "other", with_eval=False)
    info = json.loads((tmp_path / "other" / "run_info.json").read_text())
    cases = (
        ("someone/clothes", ["someone/clothes"], "[someone/clothes](https://huggingface.co/datasets/someone/clothes)"),
        (None, None, "my folder of images"),
    )
    for dataset_id, expected, source in cases:
        info.update(dataset_id=dataset_id, dataset="my folder of images")
        (tmp_path / "other" / "run_info.json").write_text(json.dumps(info))
        fields = card_fields(folder)
        assert fields["metadata"].datasets == expected
        assert "fashion-mnist" not in fields["metadata"].tags
        assert fields["metadata"].eval_results[0].dataset_type == (dataset_id or "imagefolder")
        assert fields["data_source"] == source
        assert fields["training_data"] == (dataset_id or "my folder of images")


def test_card_ignores_a_validation_split_accuracy(tmp_path):
    folder = make_run_folder(tmp_path / "val", with_eval=False)
    info = json.loads((tmp_path / "val" / "run_info.json").read_text())
    (tmp_path / "val" / "run_info.json").write_text(json.dumps({**info, "eval_split": "validation"}))
    fields = card_fields(folder)
    assert fields["metadata"].eval_results is None
    assert fields["accuracy"] == NOT_MEASURED
    assert fields["accuracy_source"] is None
    assert fields["eval_split"] == "validation"


def test_card_rejects_non_model_folders(tmp_path):
    with pytest.raises(RunFolderError, match="not a folder"):
        build_model_card(tmp_path / "missing")
    with pytest.raises(RunFolderError, match="no config.json"):
        build_model_card(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(RunFolderError, match="model_type='bert'"):
        build_model_card(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(RunFolderError, match="config.json is not valid JSON"):
        build_model_card(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# Staging and pushing
# ---------------------------------------------------------------------------------------------------------------

_BLOCKED_LOAD = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hf_vit_d2l" or name.startswith("hf_vit_d2l."):
                raise ImportError("hf_vit_d2l is blocked in this process")

    sys.meta_path.insert(0, BlockPackage())
    try:
        import hf_vit_d2l  # noqa: F401
        raise SystemExit("hf_vit_d2l was importable")
    except ImportError:
        pass

    from PIL import Image
    from transformers import AutoModelForImageClassification, pipeline

    folder = sys.argv[1]
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)
    classifier = pipeline("image-classification", model=folder, trust_remote_code=True)
    out = classifier(Image.new("RGB", (50, 37), (200, 10, 10)), top_k=3)
    print(json.dumps({"model": type(model).__module__, "labels": [o["label"] for o in out],
                      "scores": [o["score"] for o in out]}))
    """
)


def test_dry_run_folder_is_complete_and_loads_without_the_package(run_folder, tmp_path):
    before = _tree_digest(run_folder)
    out = stage_for_upload(run_folder, tmp_path / "upload", repo_id="someone/vit-d2l-tiny")
    assert _tree_digest(run_folder) == before  # the training folder is only read
    names = set(os.listdir(out))
    assert {
        "README.md",
        "model.safetensors",
        "config.json",
        "configuration_vit_d2l.py",
        "modeling_vit_d2l.py",
        "image_processing_vit_d2l.py",
        "preprocessor_config.json",
        "all_results.json",
        "eval_results.json",
        "run_info.json",
        "trainer_state.json",
        "training_curves.png",
        "confusion_matrix.png",
    } <= names
    check_folder_complete(out)  # raises HubPushError when incomplete
    assert ModelCard.load(os.path.join(out, "README.md")).data.pipeline_tag == "image-classification"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".upload")]  # no staging leftovers

    script = tmp_path / "load_blocked.py"
    script.write_text(_BLOCKED_LOAD)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    proc = subprocess.run(
        [sys.executable, "-I", str(script), out], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["model"].startswith("transformers_modules.")  # the folder's code, not the package
    assert len(result["labels"]) == 3, result
    assert set(result["labels"]) <= set(FASHION_MNIST_LABELS), result

    # Same image through the package gives the same probabilities.
    model = ViTD2LForImageClassification.from_pretrained(run_folder).eval()
    processor = ViTD2LImageProcessor.from_pretrained(run_folder)
    with torch.no_grad():
        probs = model(**processor(images=Image.new("RGB", (50, 37), (200, 10, 10)), return_tensors="pt")).logits
    top = probs.softmax(-1)[0].topk(3)
    assert result["scores"] == pytest.approx(top.values.tolist(), abs=1e-5)


def test_dry_run_refuses_to_overwrite(run_folder, tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(HubPushError, match="already exists"):
        stage_for_upload(run_folder, target)
    assert os.listdir(target) == ["keep.txt"]
    assert (target / "keep.txt").read_text() == "mine"
    with pytest.raises(HubPushError, match="outside the model folder"):
        stage_for_upload(run_folder, os.path.join(run_folder, "upload"))


def test_incomplete_folder_is_reported(run_folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(run_folder, broken)
    os.remove(broken / "modeling_vit_d2l.py")
    config = json.loads((broken / "config.json").read_text())
    del config["auto_map"]["AutoModel"]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(HubPushError, match="config.json has no auto_map entry for AutoModel; code file") as info:
        check_folder_complete(broken)
    assert "modeling_vit_d2l.py is missing" in str(info.value)
    with pytest.raises(HubPushError, match="modeling_vit_d2l.py is missing"):
        stage_for_upload(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _push_cli(run_folder, tmp_path, extra_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH=REPO_ROOT, **extra_env)
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "scripts", "push_to_hub.py"), run_folder, "--repo_id", "u/m"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc, time.monotonic() - start


def test_push_cli_offline_fails_fast_with_a_clear_message_and_changes_nothing(run_folder, tmp_path):
    before = _tree_digest(run_folder)
    proc, seconds = _push_cli(run_folder, tmp_path, {"HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_fake"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "HF_HUB_OFFLINE is set" in proc.stderr
    assert "Nothing was changed" in proc.stderr
    assert "--dry_run" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert seconds < 60  # the imports; no network wait at all
    assert _tree_digest(run_folder) == before
    assert not [n for n in os.listdir(os.path.dirname(run_folder)) if n.startswith(".")]


@pytest.mark.parametrize(
    "token, endpoint, message",
    [
        (None, "https://huggingface.co", "No Hugging Face token"),
        ("hf_fake", "http://127.0.0.1:9", "Cannot reach the Hub at http://127.0.0.1:9"),
    ],
    ids=["no-token", "unreachable"],
)
def test_push_without_token_or_network_fails_before_touching_anything(
    run_folder, tmp_path, monkeypatch, token, endpoint, message
):
    from huggingface_hub import constants

    from hf_vit_d2l.hub import push_to_hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no_stored_tokens"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    before = _tree_digest(run_folder)
    start = time.monotonic()
    with pytest.raises(HubPushError, match=message) as info:
        push_to_hub(run_folder, "u/m")
    assert time.monotonic() - start < 5
    assert "Nothing was changed" in str(info.value)
    assert _tree_digest(run_folder) == before


def test_push_rejects_bad_repo_ids(run_folder):
    from hf_vit_d2l.hub import push_to_hub

    for bad in ("", "no-slash", "a/b/c", "/name"):
        with pytest.raises(HubPushError, match="USER/NAME"):
            push_to_hub(run_folder, bad, dry_run_dir="unused")
    with pytest.raises(HubPushError, match="second USER/NAME"):
        push_to_hub(run_folder, "u/m", stock_vit_repo_id="u/m", dry_run_dir="unused")


def test_push_cli_dry_run_writes_the_card(run_folder, tmp_path):
    out = tmp_path / "dry"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH=REPO_ROOT)
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "scripts", "push_to_hub.py"), run_folder, "--repo_id", "u/m"]
        + ["--dry_run", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote the folder that would be uploaded to {out}" in proc.stdout
    card = ModelCard.load(out / "README.md")
    assert 'model="u/m", trust_remote_code=True, revision="main"' in card.text


def test_push_cli_damaged_weights_get_one_line(run_folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(run_folder, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH=REPO_ROOT)
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "scripts", "push_to_hub.py"), str(broken), "--repo_id", "u/m"]
        + ["--dry_run", str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert f"{weights} is damaged" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_dry_run_with_stock_vit_export(run_folder, tmp_path):
    """--also_stock_vit_repo: a second folder that plain transformers loads (no remote code), same probabilities."""
    from transformers import AutoModelForImageClassification, ViTForImageClassification, pipeline

    from hf_vit_d2l.hub import push_to_hub

    result = push_to_hub(run_folder, "u/m", stock_vit_repo_id="u/m-stock", dry_run_dir=tmp_path / "up")
    stock_dir = result["stock_vit_staged"]
    assert stock_dir == str(tmp_path / "up") + "-stock-vit"
    assert {"README.md", "config.json", "model.safetensors", "preprocessor_config.json"} <= set(os.listdir(stock_dir))
    assert not [n for n in os.listdir(stock_dir) if n.endswith(".py")]
    with open(os.path.join(stock_dir, "config.json")) as f:
        config = json.load(f)
    assert config["model_type"] == "vit"
    assert "auto_map" not in config
    assert config["num_channels"] == 3
    stock = AutoModelForImageClassification.from_pretrained(stock_dir).eval()
    assert isinstance(stock, ViTForImageClassification)
    image = Image.fromarray(_test_images(1)[0][0], "L")
    expected = ViTD2LForImageClassification.from_pretrained(run_folder).eval()
    processor = ViTD2LImageProcessor.from_pretrained(run_folder)
    with torch.no_grad():
        reference = expected(**processor(images=image, return_tensors="pt")).logits.softmax(-1)[0]
    out = pipeline("image-classification", model=stock_dir)(image, top_k=3)
    assert [o["label"] for o in out] == [FASHION_MNIST_LABELS[int(i)] for i in reference.topk(3).indices]
    assert [o["score"] for o in out] == pytest.approx(reference.topk(3).values.tolist(), abs=1e-5)
    assert "u/m-stock" in ModelCard.load(os.path.join(tmp_path / "up", "README.md")).text
    # Colour input: the package rounds the grayscale image to 8 bits, the folded conv does not (< 0.5/255 a pixel).
    colour = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 30, 3), dtype=np.uint8), "RGB")
    with torch.no_grad():
        reference = expected(**processor(images=colour, return_tensors="pt")).logits.softmax(-1)[0]
    out = pipeline("image-classification", model=stock_dir)(colour, top_k=10)
    by_label = {o["label"]: o["score"] for o in out}
    assert [by_label[name] for name in FASHION_MNIST_LABELS] == pytest.approx(reference.tolist(), abs=2e-4)


def test_stock_export_of_a_mean_pooling_model_is_refused_before_any_work(run_folder, tmp_path):
    from hf_vit_d2l.hub import push_to_hub

    folder = tmp_path / "mean"
    shutil.copytree(run_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["pooling"] = "mean"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(HubPushError, match="pooling='mean'.*Drop --also_stock_vit_repo"):
        push_to_hub(folder, "u/m", stock_vit_repo_id="u/m-stock", dry_run_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "out-stock-vit").exists()


def test_upload_pins_the_uploaded_commit_in_the_card(run_folder, monkeypatch):
    """The card's trust_remote_code snippets name the commit that holds the code (a stand-in HfApi records calls)."""
    from types import SimpleNamespace

    import huggingface_hub

    from hf_vit_d2l import hub

    oid = "0123456789abcdef0123456789abcdef01234567"
    calls = []

    class RecordingApi:
        def __init__(self, token):
            calls.append(("token", token))

        def create_repo(self, repo_id, private, exist_ok):
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls.append(("folder", repo_id, set(os.listdir(folder_path))))
            return SimpleNamespace(oid=oid)

        def upload_file(self, path_or_fileobj, path_in_repo, repo_id, commit_message):
            calls.append(("file", repo_id, path_in_repo, path_or_fileobj.decode()))

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    monkeypatch.setattr(hub, "check_hub_ready", lambda: "hf_token")
    result = hub.push_to_hub(run_folder, "u/m", stock_vit_repo_id="u/m-stock")
    assert result == {
        "url": "https://huggingface.co/u/m",
        "stock_vit_url": "https://huggingface.co/u/m-stock",
        "commit": "0123456789abcdef0123456789abcdef01234567",
    }
    assert calls[0] == ("token", "hf_token")
    assert calls[1][:2] == ("folder", "u/m")
    assert {"README.md", "model.safetensors", "modeling_vit_d2l.py"} <= calls[1][2]
    kind, repo, path, card = calls[2]
    assert (kind, repo, path) == ("file", "u/m", "README.md")
    assert f'trust_remote_code=True, revision="{oid}"' in card
    assert f'"u/m", "{oid}"' in card
    assert calls[3][:2] == ("folder", "u/m-stock")
    assert "config.json" in calls[3][2]


def test_get_test_accuracy_never_reports_a_validation_split():
    from hf_vit_d2l.hub import get_test_accuracy

    all_results = {"eval_accuracy": 0.9}
    assert get_test_accuracy({}, all_results, {"eval_split": "validation"}) is None
    assert get_test_accuracy({}, all_results, {"eval_split": "test", "eval_samples": 100}) == (
        0.9,
        100,
        "all_results.json",
    )
    evaluated = {"accuracy": 0.88, "num_samples": 10000}  # scripts/run_evaluation.py's test-split result wins
    assert get_test_accuracy(evaluated, all_results, {"eval_split": "validation"}) == (
        0.88,
        10000,
        "eval_results.json",
    )
    assert get_test_accuracy({**evaluated, "eval_split": "validation"}, {}, {}) is None
