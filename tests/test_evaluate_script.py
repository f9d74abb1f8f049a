"""scripts/evaluate.py: accuracy, per-class accuracy, confusion matrix (JSON + PNG) of a saved folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_vit_d2l import ViTD2LConfig, ViTD2LForImageClassification, ViTD2LImageProcessor
from hf_vit_d2l.training import DataArguments, EvaluateArguments, TrainingSetupError, evaluate_saved_model

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(
    not (DATA_DIR / "t10k-images-idx3-ubyte.gz").exists(), reason="needs Debian's dataset-fashion-mnist"
)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    config = ViTD2LConfig(
        image_size=28, patch_size=7, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1
    )
    model = ViTD2LForImageClassification(config)
    # A few AdamW steps on 2,000 training images, so that predictions vary (an untrained model predicts one class).
    from hf_vit_d2l.data import read_idx

    images = torch.from_numpy(read_idx(DATA_DIR / "train-images-idx3-ubyte.gz")[:2000].copy()).float().div(255)
    labels = torch.from_numpy(read_idx(DATA_DIR / "train-labels-idx1-ubyte.gz")[:2000].astype(np.int64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(1):
        for x, y in zip(images[:, None].split(100), labels.split(100), strict=True):
            model(pixel_values=x, labels=y).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval()
    model.save_pretrained(folder)
    ViTD2LImageProcessor(size={"height": 28, "width": 28}).save_pretrained(folder)
    return folder, model


def test_evaluate_script_writes_json_and_png(saved_model, tmp_path):
    folder, model = saved_model
    out = tmp_path / "eval"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "evaluate.py"), "--model_name_or_path", str(folder),
         "--output_dir", str(out), "--data_dir", str(DATA_DIR), "--batch_size", "500"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accuracy" in result.stdout and "Ankle boot" in result.stdout
    results = json.loads((out / "eval_results.json").read_text())
    assert results["num_samples"] == 10_000
    assert results["labels"] == list(model.config.id2label.values())

    # The same numbers computed here, straight from the IDX files and the model (no data.py, no processor class).
    from hf_vit_d2l.data import read_idx

    images = torch.from_numpy(read_idx(DATA_DIR / "t10k-images-idx3-ubyte.gz").copy()).float().div(255)[:, None]
    labels = torch.from_numpy(read_idx(DATA_DIR / "t10k-labels-idx1-ubyte.gz").astype(np.int64))
    with torch.no_grad():
        logits = torch.cat([model(pixel_values=chunk).logits for chunk in images.split(1000)])
    predictions = logits.argmax(-1)
    matrix = np.zeros((10, 10), dtype=np.int64)
    np.add.at(matrix, (labels.numpy(), predictions.numpy()), 1)
    assert results["confusion_matrix"] == matrix.tolist()
    assert results["accuracy"] == pytest.approx((predictions == labels).double().mean().item(), abs=1e-12)
    assert 0.2 < results["accuracy"] < 1  # a partly trained model (measured 0.30), not one constant class
    assert len(set(predictions.tolist())) >= 5
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert results["loss"] == pytest.approx(loss, rel=1e-5)
    for i, name in enumerate(results["labels"]):
        assert results["per_class_accuracy"][name] == pytest.approx(matrix[i, i] / matrix[i].sum())
    assert sum(map(sum, results["confusion_matrix"])) == 10_000
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_defaults_to_the_model_folder_and_subsets(saved_model, tmp_path):
    folder, _ = saved_model
    results = evaluate_saved_model(
        EvaluateArguments(model_name_or_path=str(folder)),
        DataArguments(data_dir=str(DATA_DIR), max_eval_samples=300),
    )
    assert results["num_samples"] == 300 and sum(map(sum, results["confusion_matrix"])) == 300
    assert (folder / "eval_results.json").is_file() and (folder / "confusion_matrix.png").is_file()


def test_evaluate_bad_inputs(saved_model, tmp_path):
    folder, _ = saved_model
    with pytest.raises(TrainingSetupError, match="no such folder"):
        evaluate_saved_model(EvaluateArguments(model_name_or_path=str(tmp_path / "missing")), DataArguments())
    with pytest.raises(TrainingSetupError, match="--output_dir"):
        evaluate_saved_model(EvaluateArguments(model_name_or_path="someone/model"), DataArguments())
    with pytest.raises(TrainingSetupError, match="does not exist"):
        evaluate_saved_model(
            EvaluateArguments(model_name_or_path=str(folder), output_dir=str(tmp_path)),
            DataArguments(data_dir=str(tmp_path / "no-data")),
        )


def test_evaluate_test_time_flip_override(saved_model, tmp_path):
    """--test_time_flip true: the mean of the image's and its mirror's logits; the saved folder is unchanged."""
    folder, model = saved_model
    data_args = DataArguments(data_dir=str(DATA_DIR), max_eval_samples=500)
    path = str(folder)
    plain = evaluate_saved_model(EvaluateArguments(model_name_or_path=path, output_dir=str(tmp_path / "a")), data_args)
    flipped = evaluate_saved_model(
        EvaluateArguments(model_name_or_path=path, output_dir=str(tmp_path / "b"), test_time_flip=True), data_args
    )
    assert plain["test_time_flip"] is False and flipped["test_time_flip"] is True
    assert plain["confusion_matrix"] != flipped["confusion_matrix"]
    assert json.loads((folder / "config.json").read_text()).get("test_time_flip") is False
    # The flipped numbers computed here from the same 500 images (the seeded subset evaluate uses).
    from hf_vit_d2l import training

    _, test, _, _ = training.load_data(data_args, training.ModelArguments(), seed=42)
    test = training._subset(test, 500, 42)
    images = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 255) for im in test["image"]])[:, None]
    labels = torch.tensor(test["label"])
    with torch.no_grad():
        logits = (model(pixel_values=images).logits + model(pixel_values=images.flip(-1)).logits) / 2
    assert flipped["accuracy"] == pytest.approx((logits.argmax(-1) == labels).double().mean().item(), abs=1e-12)
