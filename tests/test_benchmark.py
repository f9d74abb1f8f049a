"""benchmarks/benchmark.py and benchmarks/gpu_book_run.py: what they measure and record (tiny configs, real data).

Benchmarks are scripts: these tests check the bookkeeping (interleaved repeats, per-round ratios, the JSON, the
bf16 guard, the Trainer units) and that the GPU-resident loop learns on a CPU, never how fast anything is.
"""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import benchmark  # noqa: E402
import gpu_book_run  # noqa: E402

TINY = "image_size=32,patch_size=8,hidden_size=32,intermediate_size=37"


def test_ratios_are_medians_of_per_round_ratios():
    rows = benchmark.summarise({"a": [10.0, 30.0, 20.0], "b": [5.0, 10.0, 40.0]}, reference="b")
    assert rows["a"]["img_per_s"] == 20.0
    assert rows["a"]["repeats_img_per_s"] == [10.0, 30.0, 20.0]
    assert rows["a"]["vs_b"] == 2.0  # rounds: 2.0, 3.0, 0.5 -> median 2.0 (not 20 / 10)
    assert rows["b"]["vs_b"] == 1.0
    calls = []
    rates = benchmark.interleave({"x": lambda: calls.append("x") or 1.0, "y": lambda: calls.append("y") or 2.0}, 3)
    assert calls == ["x", "y"] * 3
    assert rates == {"x": [1.0] * 3, "y": [2.0] * 3}


def test_train_and_bf16_sections_record_every_repeat(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark, "cpu_has_native_bf16", lambda: False)
    out = tmp_path / "bench.json"
    argv = ["--config_overrides", TINY, "--batch_size", "4", "--steps", "1", "--sections", "train", "bf16"]
    assert benchmark.main([*argv, "--json_out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["machine"]["cpu_isa"]
    assert result["machine"]["torch_threads"] >= 1
    models = result["sections"]["train"]["models"]
    assert list(models) == list(benchmark.MODELS)
    for row in models.values():
        assert len(row["repeats_img_per_s"]) == 3
        assert min(row["repeats_img_per_s"]) > 0
    assert models["transformers_vit"]["vs_transformers_vit"] == models["d2l_book"]["vs_d2l_book"] == 1.0
    # same architecture: this model and the book's have the same parameters; stock ViT adds W_o's bias only
    assert models["this_eager"]["num_parameters"] == models["d2l_book"]["num_parameters"] == 16_372
    assert models["transformers_vit"]["num_parameters"] - models["this_eager"]["num_parameters"] == 2 * 32
    assert "no native bf16" in result["sections"]["bf16"]["skipped"]
    assert "python benchmarks/benchmark.py" in result["command"]


def test_stock_vit_peer_with_the_books_dropouts_does_our_dropout_work():
    """Same eval logits as stock ViT; in training it drops out as many elements per forward as this model does."""
    config = benchmark.load_config("vit_d2l_fashion_mnist", TINY)
    x = torch.rand(3, config.num_channels, config.image_size, config.image_size)

    def dropped_elements(model):  # elements through every nn.Dropout with p > 0 in one training forward
        sizes = []
        hooks = [
            m.register_forward_hook(lambda m, i, o: sizes.append(o.numel()))
            for m in model.modules()
            if isinstance(m, torch.nn.Dropout) and m.p > 0
        ]
        model.train()(x)
        for hook in hooks:
            hook.remove()
        return sum(sizes)

    stock, peer, ours = (
        benchmark.build_model(name, config, 0)
        for name in ("transformers_vit", "transformers_vit_book_dropout", "this_sdpa")
    )
    with torch.no_grad():
        torch.testing.assert_close(peer.eval()(x).logits, stock.eval()(x).logits, rtol=0, atol=0)
    assert dropped_elements(peer) == dropped_elements(ours) > dropped_elements(stock)


def test_this_model_with_nn_dropout_differs_only_in_its_dropout_modules():
    config = benchmark.load_config("vit_d2l_fashion_mnist", TINY)
    ours, peer = (benchmark.build_model(name, config, 0) for name in ("this_sdpa", "this_sdpa_nn_dropout"))
    kinds = [[type(m).__name__ for m in model.modules() if isinstance(m, torch.nn.Dropout)] for model in (ours, peer)]
    assert kinds[0], "this_sdpa has no dropout modules"
    assert kinds == [["ViTD2LDropout"] * len(kinds[0]), ["Dropout"] * len(kinds[0])]
    assert [m.p for m in ours.modules() if isinstance(m, torch.nn.Dropout)] == [
        m.p for m in peer.modules() if isinstance(m, torch.nn.Dropout)
    ]
    x = torch.rand(3, config.num_channels, config.image_size, config.image_size)
    with torch.no_grad():
        torch.testing.assert_close(peer.eval()(x).logits, ours.eval()(x).logits, rtol=0, atol=0)


def test_trainer_and_data_sections_on_real_images(tmp_path, fashion_mnist_dir):
    args = benchmark.BenchmarkArguments(
        config_overrides=TINY,
        batch_size=8,
        steps=1,
        repeats=1,
        trainer_steps=2,
        data_samples=40,
        sections=["trainer", "data"],
        data_dir=str(fashion_mnist_dir),
    )
    result = benchmark.run_benchmark(args, log=lambda _: None)
    rows = result["sections"]["trainer"]["models"]
    assert list(rows) == ["bare_step", "bare_step_with_collation", *benchmark.TRAINER_VARIANTS]
    assert rows["trainer_1_worker"]["training_arguments"] == {"dataloader_num_workers": 1}
    for name, row in rows.items():
        assert row["img_per_s"] > 0, name
        assert row["vs_bare_step"] > 0, name
    assert result["sections"]["data"]["models"]["dataset_processor_collator"]["img_per_s"] > 0
    assert "### trainer" in benchmark.format_report(result)


def test_real_images_and_bad_arguments(fashion_mnist_dir, capsys):
    dataset = benchmark.fashion_mnist_slice(3, str(fashion_mnist_dir))
    assert dataset["label"] == [9, 0, 0]  # Ankle boot, T-shirt, T-shirt
    assert dataset[0]["image"].size == (28, 28)
    assert benchmark.main(["--sections", "trian"]) == 2
    assert "unknown names ['trian']" in capsys.readouterr().err
    assert benchmark.main(["--config_overrides", "hiden_size=4"]) == 2
    assert "key hiden_size isn't in the original config dict" in capsys.readouterr().err
    assert benchmark.main(["--config_overrides", "hidden_size=30"]) == 2  # 8 heads: the config's own check
    assert "must be divisible by num_attention_heads" in capsys.readouterr().err
    assert benchmark.main(["--sections", "data", "--data_dir", "/nonexistent"]) == 2
    assert "scripts/setup.sh" in capsys.readouterr().err


def test_gpu_book_run_learns_on_the_cpu(tiny_idx_dir, tmp_path):
    out = tmp_path / "run.json"
    argv = ["--device", "cpu", "--preset", "vit_d2l_fashion_mnist_quick", "--epochs", "2", "--batch_size", "32"]
    argv += ["--no-bf16", "--no-compile", "--data_dir", str(tiny_idx_dir), "--json_out", str(out)]
    assert gpu_book_run.main(argv) == 0
    epochs = json.loads(out.read_text())["epochs"]
    assert len(epochs) == 2
    assert epochs[1]["train_loss"] < epochs[0]["train_loss"]
    assert epochs[1]["eval_accuracy"] > 0.2  # 200 real test images (measured 0.28); chance is 0.1


def test_gpu_book_run_refuses_a_missing_gpu(capsys):
    if benchmark.torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert gpu_book_run.main(["--device", "cuda"]) == 2
    assert "--device cpu" in capsys.readouterr().err
