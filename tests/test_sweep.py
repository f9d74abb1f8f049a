"""benchmarks/sweep.py: bare-loop trials on a held-out validation split of the training set (never the test set)."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import sweep  # noqa: E402

TINY = json.dumps({"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 1})


def test_split_is_seeded_stratified_and_disjoint(tiny_idx_dir):
    (x_train, y_train), (x_val, y_val) = sweep.load_split(100, str(tiny_idx_dir))
    assert x_train.shape == (500, 28, 28) and x_val.shape == (100, 28, 28) and x_train.dtype == torch.uint8
    all_labels = torch.bincount(torch.cat([y_train, y_val]), minlength=10)
    assert torch.allclose(torch.bincount(y_val, minlength=10) / 100, all_labels / 600, atol=0.02)  # stratified
    train_rows = {bytes(x.numpy()) for x in x_train}
    assert not any(bytes(x.numpy()) in train_rows for x in x_val)
    (_, again), _ = sweep.load_split(100, str(tiny_idx_dir))
    assert torch.equal(again, y_train)


def test_augment_crops_and_flips():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(sweep.augment(x, 0, 1.0, -1.0, gen), x.flip(-1))
    cropped = sweep.augment(x, 2, 0.0, -1.0, gen)
    assert cropped.shape == x.shape
    for image, crop in zip(x, cropped):  # every crop is a window of the padded image: its pixels or the fill
        assert set(crop.unique().tolist()) <= set(image.unique().tolist()) | {-1.0}


def test_short_trial_learns_and_appends_json(tiny_idx_dir, tmp_path):
    out = tmp_path / "trials.jsonl"
    args = sweep.SweepArguments(
        config_overrides=TINY, num_train_epochs=3, batch_size=32, learning_rate=5e-3, crop_padding=2,
        validation_size=100, data_dir=str(tiny_idx_dir), json_out=str(out),
    )  # fmt: skip
    lines = []
    result = sweep.run_trial(args, log=lines.append)
    assert result["num_parameters"] == 10_986 and len(result["validation_curve"]) == 3
    # the quick model predicts with flip test-time augmentation, so that is the curve it reports
    assert result["test_time_flip"] is True and result["validation_curve"] == result["validation_curve_flip_tta"]
    assert result["validation_accuracy"] > 0.3  # 100 held-out real images after 48 steps; chance 0.1
    assert json.loads(out.read_text().splitlines()[-1])["validation_accuracy"] == result["validation_accuracy"]
    assert "flip TTA" in lines[-1]


def test_bad_override_is_a_clear_error(capsys):
    assert sweep.main(["--config_overrides", '{"hiden_size": 3}']) == 2
    assert "unknown config fields ['hiden_size']" in capsys.readouterr().err
