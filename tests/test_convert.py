"""Converters: the book's `ViT` state dict -> ViTD2L, ViTD2L <-> stock transformers ViT, and the CLI script."""

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from d2l_reference import ViT
from transformers import AutoModelForImageClassification, ViTForImageClassification, ViTModel

from hf_vit_d2l import (
    CheckpointConversionError,
    ViTD2LConfig,
    ViTD2LForImageClassification,
    ViTD2LModel,
    from_d2l_state_dict,
    to_transformers_vit,
)
from hf_vit_d2l.convert import infer_d2l_config_kwargs, load_d2l_checkpoint, to_d2l_state_dict
from hf_vit_d2l.presets import parse_config_overrides

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "convert_d2l_checkpoint.py"
TINY = {"img_size": 30, "patch_size": 3, "num_hiddens": 32, "mlp_num_hiddens": 37, "num_heads": 4, "num_blks": 2}


def book_model(seed=0, use_bias=False, **sizes):
    torch.manual_seed(seed)
    kwargs = {**TINY, "emb_dropout": 0.1, "blk_dropout": 0.1, **sizes}
    model = ViT(use_bias=use_bias, **kwargs).eval()
    if use_bias:  # PyTorch's default init of these is already non-zero; make sure they matter
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("attention.W_o.bias"):
                    param.normal_(0, 0.5)
    return model


def images(batch=7, size=30, seed=1):
    return torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------- book -> ours


@pytest.mark.parametrize("use_bias", [False, True])
def test_book_module_to_ours_equal_logits_tiny(use_bias):
    book = book_model(use_bias=use_bias)
    model = from_d2l_state_dict(book.state_dict(), {"num_heads": 4})
    assert not model.training
    assert model.config.qkv_bias is use_bias
    assert model.config.num_attention_heads == 4
    assert (model.config.image_size, model.config.patch_size, model.config.hidden_size) == (30, 3, 32)
    assert (model.config.intermediate_size, model.config.num_hidden_layers, model.config.num_labels) == (37, 2, 10)
    with torch.no_grad():
        torch.testing.assert_close(model(images()).logits, book(images()), atol=1e-5, rtol=0)
        for implementation in ("eager", "sdpa"):
            model.set_attn_implementation(implementation)
            torch.testing.assert_close(model(images()).logits, book(images()), atol=1e-5, rtol=0)


@pytest.mark.parametrize("use_bias", [False, True])
def test_book_config_with_inferred_sizes(use_bias):
    torch.manual_seed(0)
    book = ViT(96, 16, 512, 2048, 8, 2, 0.1, 0.1, use_bias=use_bias).eval()
    model = from_d2l_state_dict(book.state_dict())  # config=None: everything from the shapes, 8 heads
    book_defaults = ViTD2LConfig()
    for field in ("image_size", "patch_size", "num_channels", "hidden_size", "intermediate_size", "num_hidden_layers"):
        assert getattr(model.config, field) == getattr(book_defaults, field), field
    assert model.config.num_attention_heads == 8
    assert model.config.id2label == book_defaults.id2label
    assert model.config.qkv_bias is use_bias
    expected = 6_457_866 + (4 * 2 * 512 if use_bias else 0)
    assert sum(p.numel() for p in model.parameters()) == expected
    x = images(batch=3, size=96)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, book(x), atol=1e-5, rtol=0)


def test_other_sizes_channels_and_classes():
    torch.manual_seed(0)
    book = ViT(32, 8, 24, 40, 6, 3, 0.0, 0.0, num_classes=5, num_channels=3).eval()
    model = from_d2l_state_dict(book.state_dict(), {"num_heads": 6})
    assert model.config.num_channels == 3
    assert model.config.num_labels == 5
    assert model.config.num_hidden_layers == 3
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, book(x), atol=1e-5, rtol=0)


def test_round_trip_back_to_the_book_module():
    book = book_model(use_bias=True)
    model = from_d2l_state_dict(book.state_dict(), {"num_heads": 4})
    again = ViT(use_bias=True, **{**TINY, "emb_dropout": 0.1, "blk_dropout": 0.1}).eval()
    again.load_state_dict(to_d2l_state_dict(model), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(again(images()), book(images()), rtol=0, atol=0)


def test_wrapper_prefixes_are_removed():
    book = book_model()
    wrapped = {f"module._orig_mod.{k}": v for k, v in book.state_dict().items()}
    model = from_d2l_state_dict(wrapped, {"num_heads": 4})
    with torch.no_grad():
        torch.testing.assert_close(model(images()).logits, book(images()), atol=1e-5, rtol=0)


def test_missing_and_extra_keys_are_listed():
    state = book_model().state_dict()
    del state["blks.1.mlp.dense2.bias"]
    del state["head.0.weight"]
    state["blks.0.attention.W_q.bias"] = torch.zeros(32)  # only some biases: a use_bias mismatch
    state["extra.thing"] = torch.zeros(1)
    with pytest.raises(CheckpointConversionError) as info:
        from_d2l_state_dict(state, {"num_heads": 4})
    message = str(info.value)
    for key in ("blks.1.mlp.dense2.bias", "head.0.weight", "extra.thing", "blks.0.attention.W_k.bias"):
        assert key in message, key
    assert "missing keys" in message
    assert "unexpected keys" in message


def test_shape_mismatch_against_an_explicit_config_is_listed():
    state = book_model().state_dict()
    config = ViTD2LConfig(image_size=30, patch_size=3, hidden_size=32, num_attention_heads=4, intermediate_size=64)
    with pytest.raises(CheckpointConversionError, match=r"blks\.0\.mlp\.dense1\.weight: checkpoint \(37, 32\)"):
        from_d2l_state_dict(state, config)


def test_heads_that_do_not_divide_hidden_need_num_heads():
    torch.manual_seed(0)
    state = ViT(30, 3, 36, 37, 4, 1, 0.1, 0.1).state_dict()  # 36 units: not divisible by the default 8 heads
    with pytest.raises(CheckpointConversionError, match="num_attention_heads"):
        from_d2l_state_dict(state)
    assert from_d2l_state_dict(state, {"num_attention_heads": 4}).config.num_attention_heads == 4


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ([1, 2, 3], "not a state dict of tensors: it is a list"),
        ({}, "empty"),
        ({"cls_token": "not a tensor"}, "not a tensor"),
        ({"weight": torch.zeros(3)}, "Missing key 'cls_token'"),
    ],
)
def test_not_a_book_state_dict(state, message):
    with pytest.raises(CheckpointConversionError, match=message):
        from_d2l_state_dict(state)


def test_infer_config_kwargs():
    kwargs = infer_d2l_config_kwargs(book_model(use_bias=True).state_dict())
    assert kwargs == {
        "image_size": 30,
        "patch_size": 3,
        "num_channels": 1,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "qkv_bias": True,
        "num_labels": 10,
    }


# ---------------------------------------------------------------------------------------------------- stock ViT


@pytest.mark.parametrize("use_bias", [False, True])
def test_to_transformers_vit_equal_logits_and_zero_output_bias(use_bias):
    model = from_d2l_state_dict(book_model(use_bias=use_bias).state_dict(), {"num_heads": 4})
    stock = to_transformers_vit(model)
    assert type(stock) is ViTForImageClassification
    assert not stock.training
    assert stock.config.layer_norm_eps == model.config.layer_norm_eps == 1e-5
    assert stock.config.qkv_bias is use_bias
    assert stock.config.hidden_act == "gelu"
    assert stock.config.id2label == model.config.id2label
    state = stock.state_dict()
    o_biases = [v for k, v in state.items() if k.endswith(("o_proj.bias", "attention.output.dense.bias"))]
    assert len(o_biases) == model.config.num_hidden_layers
    nonzero = [int(torch.count_nonzero(b)) for b in o_biases]
    assert all((n == 0) is (not use_bias) for n in nonzero), nonzero
    with torch.no_grad():
        for implementation in ("eager", "sdpa"):
            stock.set_attn_implementation(implementation)
            torch.testing.assert_close(stock(images()).logits, model(images()).logits, atol=1e-5, rtol=0)


def test_to_transformers_vit_layer_norm_eps_carries_over():
    torch.manual_seed(0)
    model = ViTD2LForImageClassification(
        ViTD2LConfig(image_size=30, patch_size=3, hidden_size=32, num_attention_heads=4, layer_norm_eps=1e-2)
    ).eval()
    stock = to_transformers_vit(model)
    assert stock.config.layer_norm_eps == 1e-2
    with torch.no_grad():
        torch.testing.assert_close(stock(images()).logits, model(images()).logits, atol=1e-5, rtol=0)


def test_to_transformers_vit_base_model():
    torch.manual_seed(0)
    base = ViTD2LModel(ViTD2LConfig(image_size=30, patch_size=3, hidden_size=32, num_attention_heads=4)).eval()
    stock = to_transformers_vit(base)
    assert type(stock) is ViTModel
    assert stock.pooler is None
    with torch.no_grad():
        torch.testing.assert_close(
            stock(images()).last_hidden_state, base(images()).last_hidden_state, atol=1e-5, rtol=0
        )


def test_mean_pooling_cannot_be_exported():
    model = ViTD2LForImageClassification(
        ViTD2LConfig(image_size=30, patch_size=3, hidden_size=32, num_attention_heads=4, pooling="mean")
    )
    with pytest.raises(ValueError, match="pooling='mean' cannot be exported"):
        to_transformers_vit(model)


def test_test_time_flip_export_warns_and_matches_one_view(caplog):
    torch.manual_seed(0)
    config = ViTD2LConfig(image_size=30, patch_size=3, hidden_size=32, num_attention_heads=4, test_time_flip=True)
    model = ViTD2LForImageClassification(config).eval()
    with caplog.at_level("WARNING", logger="hf_vit_d2l.convert"):
        stock = to_transformers_vit(model)
    assert "Stock ViT has no counterpart of test_time_flip" in caplog.text
    with torch.no_grad():
        two_views = model(images()).logits
        model.config.test_time_flip = False
        torch.testing.assert_close(stock(images()).logits, model(images()).logits, atol=1e-5, rtol=0)
    assert not torch.allclose(two_views, stock(images()).logits, atol=1e-4)


def test_exported_folder_loads_without_remote_code(tmp_path):
    model = from_d2l_state_dict(book_model().state_dict(), {"num_heads": 4})
    to_transformers_vit(model).save_pretrained(tmp_path)
    names = set(os.listdir(tmp_path))
    assert "model.safetensors" in names
    assert not [n for n in names if n.endswith(".py")]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "vit"
    assert "auto_map" not in config
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path, trust_remote_code=False).eval()
    assert type(loaded) is ViTForImageClassification
    with torch.no_grad():
        torch.testing.assert_close(loaded(images()).logits, model(images()).logits, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------- files, CLI


def load_script():
    spec = importlib.util.spec_from_file_location("convert_d2l_checkpoint", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_load_checkpoint_accepts_raw_and_wrapped_state_dicts(tmp_path, wrap):
    state = book_model().state_dict()
    path = tmp_path / "book.pt"
    torch.save(state if wrap is None else {wrap: state, "epoch": 3}, path)
    loaded = load_d2l_checkpoint(path)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state), [
        k for k in state if not torch.equal(loaded[k], state[k])
    ]


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Checkpoint not found"):
        load_d2l_checkpoint(tmp_path / "missing.pt")
    torch.save({"lr": 0.1}, tmp_path / "notweights.pt")
    with pytest.raises(CheckpointConversionError, match="not a state dict of tensors"):
        load_d2l_checkpoint(tmp_path / "notweights.pt")
    torch.save(book_model(), tmp_path / "module.pt")  # a whole pickled module: refused by weights_only
    with pytest.raises(CheckpointConversionError, match="refused as unsafe") as refused:
        load_d2l_checkpoint(tmp_path / "module.pt")
    assert "weights_only=False" not in str(refused.value), "never advise loading an unsafe pickle"
    assert "torch.save(model.state_dict(), path)" in str(refused.value), "says how to save a convertible file"
    (tmp_path / "garbage.pt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointConversionError, match="or it is damaged"):
        load_d2l_checkpoint(tmp_path / "garbage.pt")


def test_parse_config_overrides():
    assert parse_config_overrides("num_heads=4, emb_dropout=0.2,use_bias=true,pooling=cls") == {
        "num_heads": 4,
        "emb_dropout": 0.2,
        "use_bias": True,
        "pooling": "cls",
    }
    assert parse_config_overrides(None) == {}
    with pytest.raises(ValueError, match="'num_heads': not one key=value pair"):
        parse_config_overrides("num_heads")
    with pytest.raises(ValueError, match="'num_blks=x': invalid literal for int"):  # the failing item is named
        parse_config_overrides("hidden_size=64,num_blks=x")
    with pytest.raises(ValueError, match="'hiden_size=3': key hiden_size isn't in the original config"):
        parse_config_overrides("hiden_size=3")
    with pytest.raises(ValueError, match="Field 'pooling' expected one of"):  # the strict config's check
        parse_config_overrides("pooling=max")


def test_convert_script_end_to_end(tmp_path, capsys):
    book = book_model(use_bias=True)
    checkpoint = tmp_path / "book.pt"
    torch.save({"state_dict": book.state_dict()}, checkpoint)
    script = load_script()
    out = tmp_path / "converted"
    assert script.main(["--checkpoint", str(checkpoint), "--output_dir", str(out), "--num_heads", "4"]) == 0
    names = set(os.listdir(out))
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "modeling_vit_d2l.py"} <= names
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    assert type(model) is ViTD2LForImageClassification
    assert model.config.num_attention_heads == 4
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 30, "width": 30}
    assert processor["num_channels"] == 1
    with torch.no_grad():
        torch.testing.assert_close(model(images()).logits, book(images()), atol=1e-5, rtol=0)

    stock_out = tmp_path / "stock"
    argv = ["--checkpoint", str(checkpoint), "--output_dir", str(stock_out), "--config_overrides", "num_heads=4"]
    assert script.main([*argv, "--to_transformers"]) == 0
    stock = AutoModelForImageClassification.from_pretrained(stock_out).eval()
    assert type(stock) is ViTForImageClassification
    assert json.loads((stock_out / "preprocessor_config.json").read_text())["do_normalize"] is False
    with torch.no_grad():
        torch.testing.assert_close(stock(images()).logits, book(images()), atol=1e-5, rtol=0)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folders left behind


def test_convert_script_errors(tmp_path, capsys):
    script = load_script()
    assert script.main(["--checkpoint", str(tmp_path / "nope.pt"), "--output_dir", str(tmp_path / "o")]) == 2
    assert "Checkpoint not found" in capsys.readouterr().err
    torch.save([1, 2], tmp_path / "list.pt")
    assert script.main(["--checkpoint", str(tmp_path / "list.pt"), "--output_dir", str(tmp_path / "o")]) == 2
    assert "not a state dict" in capsys.readouterr().err
    torch.save(book_model().state_dict(), tmp_path / "book.pt")
    argv = ["--checkpoint", str(tmp_path / "book.pt"), "--output_dir", str(tmp_path / "o"), "--num_heads", "5"]
    assert script.main(argv) == 2
    assert "hidden_size=32 must be divisible by num_attention_heads=5" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
