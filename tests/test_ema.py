"""The moving average of the weights (--ema_decay): the arithmetic, the saved model, and resuming both."""

import shutil
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from hf_vit_d2l import training
from hf_vit_d2l.ema import EMA_FILE, EMACallback

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_data = pytest.mark.skipif(
    not (DATA_DIR / "train-images-idx3-ubyte.gz").exists(), reason="needs Debian's dataset-fashion-mnist"
)
TINY = "image_size=28,patch_size=7,hidden_size=32,intermediate_size=64,num_attention_heads=2,num_hidden_layers=1"


def test_ema_matches_a_hand_computation_on_a_toy_model():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    callback = EMACallback(decay=0.9)
    state = types.SimpleNamespace(global_step=0)
    control = types.SimpleNamespace(should_evaluate=False)
    callback.on_train_begin(None, state, control, model=model)
    expected = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    for step in range(1, 40):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
        state.global_step = step
        callback.on_step_end(None, state, control, model=model)
        decay = min(0.9, (1 + step) / (10 + step))
        for name, tensor in model.state_dict().items():
            expected[name] = decay * expected[name] + (1 - decay) * tensor
    for name, tensor in expected.items():
        torch.testing.assert_close(callback.average[name], tensor, rtol=1e-6, atol=1e-6, msg=name)
    raw = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    control.should_evaluate = True
    callback.on_epoch_end(None, state, control, model=model)
    torch.testing.assert_close(model.weight, expected["weight"], msg="evaluation sees the average")
    callback.on_evaluate(None, state, control, model=model)
    torch.testing.assert_close(model.weight, raw["weight"], rtol=0, atol=0, msg="training continues the raw weights")
    callback.on_train_end(None, state, control, model=model)
    torch.testing.assert_close(model.bias, expected["bias"], msg="the model ends as the average")


def test_ema_decay_out_of_range_is_refused_before_any_work(tmp_path, capsys):
    status = training.run(["--output_dir", str(tmp_path / "out"), "--ema_decay", "1.5"])
    assert status == 2, "exit status"
    assert "--ema_decay 1.5 must be between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists(), "nothing was written"


def ema_run(output_dir: Path, epochs: int = 2) -> list[str]:
    return [
        "--recipe",
        "quick",
        "--config_overrides",
        TINY,
        "--data_dir",
        str(DATA_DIR),
        "--max_train_samples",
        "256",
        "--max_eval_samples",
        "64",
        "--per_device_train_batch_size",
        "64",
        "--num_train_epochs",
        str(epochs),
        "--ema_decay",
        "0.9",
        "--disable_tqdm",
        "true",
        "--output_dir",
        str(output_dir),
    ]


@needs_data
def test_saved_model_is_the_average_and_resume_continues_both(tmp_path):
    full = tmp_path / "full"
    training.main(ema_run(full))
    saved = load_file(full / "model.safetensors")
    last = max(full.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    average = load_file(last / EMA_FILE)
    raw = load_file(last / "model.safetensors")
    for name, tensor in average.items():
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=0, msg=f"saved {name} is the average")
    assert any(not torch.equal(raw[name], average[name]) for name in raw), "the checkpoint keeps the raw weights"

    # Resume from the first epoch's checkpoint: the same raw weights and the same average at the end.
    first = min(full.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(first, resumed / first.name)
    training.main(ema_run(resumed))
    again = load_file(resumed / "model.safetensors")
    for name, tensor in saved.items():
        torch.testing.assert_close(again[name], tensor, rtol=1e-5, atol=1e-6, msg=f"resumed {name}")
