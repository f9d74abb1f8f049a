"""Smoke tests of the benchmark's plumbing and the fast path (tiny config, 1-2 steps; no timed assertions)."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from hf_vit_d2l import ViTD2LForImageClassification, get_preset
from hf_vit_d2l.benchmark import TRAIN_MODELS, BenchmarkError, BenchmarkOptions, flops_per_image, run_benchmark
from hf_vit_d2l.fast import (
    Bf16MasterWeightOptimizer,
    FastDropout,
    apply_fast_path,
    fast_dropout,
    restore_fp32,
    to_bf16_with_master_weights,
)


def _load_script():
    """scripts/benchmark.py as a module, without putting scripts/ on sys.path (scripts/evaluate.py would shadow
    the `evaluate` library for every later import in the session)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
    spec = importlib.util.spec_from_file_location("vit_d2l_benchmark_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4}
HAVE_DATA = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists()


def test_flops_of_the_book_config():
    flops = flops_per_image(get_preset("vit_d2l_fashion_mnist"))
    # 36 patches: 4,718,592 MACs; per block (37 tokens, 512/2048): 117,793,792; head 5,120 -> x2 FLOPs per MAC
    # = 0.4806 GFLOP forward, 3x for training (the issue's ~1.43 GFLOP)
    assert flops["forward"] == 2 * (4_718_592 + 2 * 117_793_792 + 5_120)
    assert flops["train"] == 3 * flops["forward"]


def test_benchmark_quick_subset(tmp_path):
    out = tmp_path / "quick.json"
    rc = _load_script().main(
        [
            "--config_overrides", json.dumps(TINY), "--batch_size", "4", "--steps", "1", "--repeats", "1",
            "--models", "this_eager", "transformers_vit", "this_bf16_master",
            "--skip", "data", "trainer", "loss_curve", "--matmul_size", "64", "--json_out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    result = json.loads(out.read_text())
    assert list(result["train"]) == ["this_eager", "transformers_vit", "this_bf16_master"]
    assert "data" not in result and "trainer" not in result and "loss_curve" not in result
    row = result["train"]["this_bf16_master"]
    assert row["compute_dtype"] == "bf16" and row["img_per_s"] > 0 and math.isfinite(row["final_loss"])
    assert row["vs_transformers"] == pytest.approx(row["img_per_s"] / result["train"]["transformers_vit"]["img_per_s"])


@pytest.mark.skipif(not HAVE_DATA, reason="needs the Debian dataset-fashion-mnist files")
def test_benchmark_script_writes_complete_json(tmp_path):
    benchmark_script = _load_script()

    out = tmp_path / "bench.json"
    rc = benchmark_script.main(
        [
            "--config_overrides", json.dumps(TINY),
            "--batch_size", "8", "--steps", "1", "--repeats", "2", "--warmup", "1",
            "--trainer_steps", "2", "--data_samples", "48", "--loss_curve_steps", "3",
            "--matmul_size", "128", "--json_out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    result = json.loads(out.read_text())
    assert set(result["matmul_gflops"]) == {"fp32", "bf16"}
    assert all(v > 0 for v in result["matmul_gflops"].values())
    assert list(result["train"]) == list(TRAIN_MODELS)
    for name, row in result["train"].items():
        assert row["img_per_s"] > 0 and len(row["samples_img_per_s"]) == 2, name
        assert math.isfinite(row["final_loss"]) and 0 < row["final_loss"] < 10, name
        assert row["matmul_fraction"] > 0
        assert row["compute_dtype"] == ("bf16" if "bf16" in name else "fp32")
        assert result["inference"][name]["img_per_s"] > 0 and result["inference"][name]["latency_ms_batch1"] > 0
    assert result["train"]["transformers_vit"]["vs_transformers"] == pytest.approx(1.0)
    assert result["train"]["this_eager"]["vs_this_fp32"] == pytest.approx(1.0)
    # same architecture and size for this model, the book's module and (up to W_o's bias) stock transformers
    params = result["num_parameters"]
    assert params["this_eager"] == params["d2l_book"] == result["config"]["num_parameters"]
    assert abs(params["transformers_vit"] - params["this_eager"]) <= 2 * TINY["hidden_size"]
    assert result["data"]["img_per_s"] > 0
    assert result["trainer"]["steps_timed"] == 2 and result["trainer"]["vs_bare_step"] > 0
    curves = result["loss_curve"]["curves"]
    assert {len(c) for c in curves.values()} == {3}
    assert curves["fp32"][0] == pytest.approx(curves["bf16_master"][0], abs=0.1)  # same init, same first batch
    assert result["peak_rss_mib"] > 50
    assert "python scripts/benchmark.py" in result["command"]


def test_benchmark_rejects_bad_options():
    with pytest.raises(BenchmarkError, match="--dtype"):
        run_benchmark(BenchmarkOptions(dtype="fp16"))
    with pytest.raises(BenchmarkError, match="unknown names"):
        run_benchmark(BenchmarkOptions(skip=["trian"]))
    with pytest.raises(BenchmarkError, match="config_overrides"):
        run_benchmark(BenchmarkOptions(config_overrides={"hidden_size": -4}, skip=list(TRAIN_MODELS)))


def test_bad_json_overrides_give_a_clear_error(capsys):
    benchmark_script = _load_script()

    assert benchmark_script.main(["--config_overrides", "{hidden_size: 4}"]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_fast_dropout_statistics_and_modes():
    torch.manual_seed(0)
    x = torch.ones(400_000)
    y = fast_dropout(x, 0.1)
    assert (y == 0).float().mean().item() == pytest.approx(0.1, abs=0.003)
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)
    values = torch.unique(y).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.9)
    assert torch.equal(fast_dropout(x, 0.1, training=False), x)
    module = FastDropout(0.3).eval()
    assert torch.equal(module(x), x)
    with pytest.raises(ValueError, match="dropout probability"):
        FastDropout(1.5)


def test_fast_path_keeps_keys_and_eval_logits():
    torch.manual_seed(0)
    model = ViTD2LForImageClassification(get_preset("vit_d2l_fashion_mnist", **TINY)).eval()
    x = torch.rand(3, 1, 32, 32)
    reference = model(x).logits
    keys = set(model.state_dict())
    apply_fast_path(model)
    assert set(model.state_dict()) == keys
    torch.testing.assert_close(model(x).logits, reference, atol=1e-5, rtol=1e-5)
    assert model(x, output_attentions=True).attentions[0].shape == (3, 4, 17, 17)
    with pytest.raises(ValueError, match="input channel"):
        model(torch.rand(3, 3, 32, 32))
    model.train()
    loss = model(x, labels=torch.tensor([0, 1, 2])).loss
    loss.backward()
    assert model.vit_d2l.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0


def test_bf16_master_weights_step_and_restore():
    torch.manual_seed(0)
    model = ViTD2LForImageClassification(get_preset("vit_d2l_fashion_mnist", **TINY))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = to_bf16_with_master_weights(model, lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9))
    assert isinstance(optimizer, Bf16MasterWeightOptimizer)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert all(m.dtype == torch.float32 for m in optimizer.master_params)
    # masters start as the exact fp32 weights, not their bf16 rounding
    assert torch.equal(optimizer.master_params[0], before["vit_d2l.embeddings.cls_token"])
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    model(x, labels=y).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)  # schedulers drive its param_groups
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    del scheduler
    state = optimizer.state_dict()
    restore_fp32(model, optimizer)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    changed = model.state_dict()["classifier.weight"]
    assert torch.equal(changed, optimizer.master_params[-2]) and not torch.equal(changed, before["classifier.weight"])
    fresh = to_bf16_with_master_weights(
        ViTD2LForImageClassification(get_preset("vit_d2l_fashion_mnist", **TINY)),
        lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    )
    fresh.load_state_dict(state)
    assert torch.equal(fresh.master_params[-2], optimizer.master_params[-2])
    with pytest.raises(ValueError, match="master_params"):
        fresh.load_state_dict({"inner": {}})
