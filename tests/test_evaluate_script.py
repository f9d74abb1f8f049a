"""hf_vit_d2l.evaluation and scripts/run_evaluation.py: accuracy, per-class accuracy, confusion matrix, plots."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_vit_d2l import ViTD2LConfig, ViTD2LForImageClassification, ViTD2LImageProcessor, evaluation
from hf_vit_d2l.data import DataArguments
from hf_vit_d2l.evaluation import ModelLoadError, plot_confusion_matrix, plot_training_curves

REPO = Path(__file__).resolve().parents[1]
EvaluateArguments, evaluate_saved_model = evaluation.EvaluateArguments, evaluation.evaluate_saved_model
label_mapping = evaluation.label_mapping
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, fashion_mnist_arrays):
    """A tiny model after a few AdamW steps on 2,000 real training images (an untrained one predicts one class)."""
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    config = ViTD2LConfig(
        image_size=28, patch_size=7, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1
    )
    model = ViTD2LForImageClassification(config)
    images, labels = fashion_mnist_arrays["train"]
    x = torch.from_numpy(images[:2000].copy()).float().div(255)[:, None]
    y = torch.from_numpy(labels[:2000].astype(np.int64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for xb, yb in zip(x.split(100), y.split(100), strict=True):
        model(pixel_values=xb, labels=yb).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval().save_pretrained(folder)
    ViTD2LImageProcessor(size={"height": 28, "width": 28}).save_pretrained(folder)
    return folder, model


def _expected(model, images, labels, flip=False):
    x = torch.from_numpy(images.copy()).float().div(255)[:, None]
    with torch.no_grad():
        logits = torch.cat([model(pixel_values=c).logits for c in x.split(1000)])
        if flip:
            logits = (logits + torch.cat([model(pixel_values=c.flip(-1)).logits for c in x.split(1000)])) / 2
    predictions = logits.argmax(-1).numpy()
    matrix = np.zeros((10, 10), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels.astype(np.int64))).item()
    return matrix, float((predictions == labels).mean()), loss


def test_evaluate_script_on_the_whole_test_split(saved_model, fashion_mnist_dir, fashion_mnist_arrays, tmp_path):
    folder, model = saved_model
    out = tmp_path / "eval"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "run_evaluation.py"),
            "--model_name_or_path",
            str(folder),
            "--output_dir",
            str(out),
            "--data_dir",
            str(fashion_mnist_dir),
            "--batch_size",
            "500",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accuracy" in result.stdout
    assert "Ankle boot" in result.stdout
    results = json.loads((out / "eval_results.json").read_text())
    assert results["num_samples"] == 10_000
    assert results["labels"] == list(model.config.id2label.values())
    # The same numbers computed here, straight from the IDX arrays and the model (no data module, no processor).
    images, labels = fashion_mnist_arrays["test"]
    matrix, accuracy, loss = _expected(model, images, labels)
    assert results["confusion_matrix"] == matrix.tolist()
    assert results["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert 0.2 < results["accuracy"] < 1
    assert (matrix.sum(axis=0) > 0).sum() >= 5  # not one constant class
    assert results["loss"] == pytest.approx(loss, rel=1e-5)
    for i, name in enumerate(results["labels"]):
        assert results["per_class_accuracy"][name] == pytest.approx(matrix[i, i] / matrix[i].sum())
    assert (out / "confusion_matrix.png").read_bytes()[:8] == PNG
    # Inverted images (255 - pixel): what the model card reports for dark items on a light background.
    _, inverted_accuracy, _ = _expected(model, 255 - images, labels)
    assert results["inverted_accuracy"] == pytest.approx(inverted_accuracy, abs=1e-12)
    assert results["inverted_accuracy"] < results["accuracy"] - 0.05


def test_evaluate_defaults_to_the_model_folder_and_flip_override(saved_model, fashion_mnist_dir, tmp_path):
    """--test_time_flip true: the mean of the image's and its mirror's logits; the saved config is unchanged."""
    folder, model = saved_model
    data_args = DataArguments(data_dir=str(fashion_mnist_dir), max_eval_samples=300)
    plain = evaluate_saved_model(EvaluateArguments(model_name_or_path=str(folder)), data_args)
    assert plain["num_samples"] == 300
    assert sum(map(sum, plain["confusion_matrix"])) == 300
    assert (folder / "eval_results.json").is_file()
    assert (folder / "confusion_matrix.png").is_file()
    flipped = evaluate_saved_model(
        EvaluateArguments(model_name_or_path=str(folder), output_dir=str(tmp_path), test_time_flip=True), data_args
    )
    assert plain["test_time_flip"] is False
    assert flipped["test_time_flip"] is True
    assert json.loads((folder / "config.json").read_text()).get("test_time_flip") is False
    from hf_vit_d2l.data import load_splits

    _, dataset, _, _ = load_splits(data_args, seed=42)  # the rows evaluate used
    images = np.stack([np.asarray(row["image"]) for row in dataset])
    labels = np.array([row["label"] for row in dataset])
    for results, flip in ((plain, False), (flipped, True)):
        matrix, accuracy, _ = _expected(model, images, labels, flip=flip)
        assert results["confusion_matrix"] == matrix.tolist()
        assert results["accuracy"] == pytest.approx(accuracy)
    assert plain["confusion_matrix"] != flipped["confusion_matrix"]


def test_evaluate_bad_inputs(saved_model, tmp_path):
    folder, _ = saved_model
    with pytest.raises(ModelLoadError, match="no such folder"):
        evaluate_saved_model(EvaluateArguments(str(tmp_path / "missing"), output_dir=str(tmp_path)), DataArguments())
    with pytest.raises(ValueError, match="no such folder"):  # not "pass --output_dir": it looks like a path
        EvaluateArguments(model_name_or_path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="--output_dir"):
        EvaluateArguments(model_name_or_path="someone/model")
    with pytest.raises(ValueError, match="--batch_size must be >= 1"):
        EvaluateArguments(model_name_or_path=str(folder), batch_size=0)


def test_evaluate_script_damaged_weights_get_one_line(saved_model, tmp_path):
    import shutil

    folder = shutil.copytree(saved_model[0], tmp_path / "broken")
    (folder / "model.safetensors").write_bytes(b"")
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "run_evaluation.py"), "--model_name_or_path", str(folder)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"error: {folder / 'model.safetensors'} is damaged (Error while deserializing header: header too small); it "
        "was cut short or overwritten. Copy the file again or save the model again."
    )


def test_label_mapping_by_name_position_and_count():
    model = {0: "a", 1: "b", 2: "c"}
    assert label_mapping(["a", "b", "c"], model).tolist() == [0, 1, 2]
    assert label_mapping(["c", "a", "b"], model).tolist() == [2, 0, 1]  # same classes, another order
    assert label_mapping(["x", "y", "z"], model).tolist() == [0, 1, 2]  # other names: by position
    with pytest.raises(ValueError, match="2 classes but the model predicts 3"):
        label_mapping(["a", "b"], model)


def test_plots_are_real_pngs(tmp_path):
    from PIL import Image

    history = [
        {"epoch": 1.0, "loss": 2.0},
        {"epoch": 1.0, "eval_loss": 1.5, "eval_accuracy": 0.4},
        {"epoch": 2.0, "loss": 1.0},
        {"epoch": 2.0, "eval_loss": 1.2, "eval_accuracy": 0.6},
        {"epoch": 2.0, "train_loss": 1.5, "train_runtime": 3.0},  # the run summary: not a point
    ]
    path = plot_training_curves(history, tmp_path / "curves.png", title="run")
    assert path == str(tmp_path / "curves.png")
    assert Path(path).read_bytes()[:8] == PNG
    matrix = np.array([[5, 1], [2, 7]])
    with Image.open(plot_confusion_matrix(matrix, ["x", "y"], tmp_path / "cm.png")) as image:
        assert image.format == "PNG"
        assert min(image.size) > 100
    with pytest.raises(ValueError, match="does not match 3 labels"):
        plot_confusion_matrix(matrix, ["x", "y", "z"], tmp_path / "bad.png")
