"""ViTD2LConfig: defaults, book aliases, validation (each bad value named in the error), presets."""

import json
from pathlib import Path

import pytest
from huggingface_hub.errors import StrictDataclassError, StrictDataclassFieldValidationError

from hf_vit_d2l import FASHION_MNIST_LABELS, PRESETS, ViTD2LConfig, ViTD2LForImageClassification, get_preset

BOOK_ALIASES = {
    "img_size": ("image_size", 32),
    "num_hiddens": ("hidden_size", 64),
    "mlp_num_hiddens": ("intermediate_size", 96),
    "num_heads": ("num_attention_heads", 4),
    "num_blks": ("num_hidden_layers", 3),
    "emb_dropout": ("embedding_dropout_prob", 0.2),
    "blk_dropout": ("block_dropout_prob", 0.3),
    "use_bias": ("qkv_bias", True),
    "num_classes": ("num_labels", 7),
}


def test_defaults_are_the_books_fashion_mnist_model():
    config = ViTD2LConfig()
    assert config.model_type == "vit_d2l"
    assert (config.image_size, config.patch_size, config.num_channels) == (96, 16, 1)
    assert (config.hidden_size, config.intermediate_size) == (512, 2048)
    assert (config.num_attention_heads, config.num_hidden_layers) == (8, 2)
    assert (config.embedding_dropout_prob, config.block_dropout_prob) == (0.1, 0.1)
    assert config.qkv_bias is False
    assert config.hidden_act == "gelu"
    assert config.layer_norm_eps == 1e-5
    assert config.pooling == "cls"
    assert config.init_style == "d2l"
    assert config.position_embedding_std == 1.0
    assert config.num_patches == 36


def test_id2label_equals_the_hub_classlabel_names():
    config = ViTD2LConfig()
    assert config.num_labels == 10
    assert [config.id2label[i] for i in range(10)] == FASHION_MNIST_LABELS
    assert FASHION_MNIST_LABELS[0] == "T - shirt / top"
    assert FASHION_MNIST_LABELS[-1] == "Ankle boot"
    assert config.label2id == {name: i for i, name in enumerate(FASHION_MNIST_LABELS)}


@pytest.mark.parametrize("alias", sorted(BOOK_ALIASES))
def test_book_alias_as_keyword_and_attribute(alias, tmp_path):
    canonical, value = BOOK_ALIASES[alias]
    config = ViTD2LConfig(**{alias: value})
    assert getattr(config, canonical) == value
    assert getattr(config, alias) == value
    config.save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    assert alias not in stored, f"config.json must store only canonical names, found {alias}"
    if canonical != "num_labels":
        assert stored[canonical] == value
    else:
        assert len(stored["id2label"]) == value
    assert getattr(ViTD2LConfig.from_pretrained(tmp_path), alias) == value


def test_alias_attribute_write_sets_canonical():
    config = ViTD2LConfig()
    config.num_hiddens = 256
    assert config.hidden_size == 256


@pytest.mark.parametrize(
    ("alias", "canonical", "alias_value", "canonical_value"),
    [
        ("num_hiddens", "hidden_size", 128, 64),
        ("num_heads", "num_attention_heads", 4, 2),
        ("use_bias", "qkv_bias", False, True),
        ("num_classes", "num_labels", 5, 7),
    ],
)
def test_contradicting_alias_and_canonical_is_an_error(alias, canonical, alias_value, canonical_value):
    with pytest.raises(ValueError, match=alias):
        ViTD2LConfig(**{alias: alias_value, canonical: canonical_value})


def test_agreeing_alias_and_canonical_is_fine():
    assert ViTD2LConfig(num_hiddens=64, hidden_size=64, num_heads=4).hidden_size == 64


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"hidden_size": 30, "num_attention_heads": 4}, "hidden_size=30"),
        ({"image_size": 30, "patch_size": 4}, "image_size=30"),
        ({"image_size": 0}, "image_size"),
        ({"patch_size": 0}, "patch_size"),
        ({"hidden_size": -8, "num_attention_heads": 1}, "hidden_size"),
        ({"intermediate_size": 0}, "intermediate_size"),
        ({"num_attention_heads": 0}, "num_attention_heads"),
        ({"num_hidden_layers": 0}, "num_hidden_layers"),
        ({"num_channels": 0}, "num_channels"),
        ({"image_size": 96.0}, "image_size"),
        ({"num_hidden_layers": True}, "num_hidden_layers"),
        ({"embedding_dropout_prob": 1.0}, "embedding_dropout_prob"),
        ({"embedding_dropout_prob": -0.1}, "embedding_dropout_prob"),
        ({"block_dropout_prob": 1.5}, "block_dropout_prob"),
        ({"blk_dropout": 1.0}, "block_dropout_prob"),
        ({"drop_path_rate": 1.0}, "drop_path_rate"),
        ({"layer_norm_eps": 0}, "layer_norm_eps"),
        ({"qkv_bias": "yes"}, "qkv_bias"),
        ({"pooling": "max"}, "pooling"),
        ({"init_style": "xavier"}, "init_style"),
        ({"hidden_act": "relu"}, "hidden_act"),
        ({"num_labels": 0, "id2label": None}, "num_labels"),
    ],
)
def test_bad_config_values_raise_an_error_naming_field_and_value(kwargs, named):
    with pytest.raises(StrictDataclassError, match=named) as info:
        ViTD2LConfig(**kwargs)
    value = next(iter(kwargs.values()))
    assert repr(value) in str(info.value) or str(value) in str(info.value), f"{value!r} not in: {info.value}"


@pytest.mark.parametrize(
    ("field", "value"),
    [("pooling", "bogus"), ("hidden_size", -8), ("num_hiddens", 0), ("block_dropout_prob", 1.0), ("qkv_bias", 1)],
)
def test_assignment_after_construction_is_validated_too(field, value):
    config = ViTD2LConfig()
    with pytest.raises(StrictDataclassFieldValidationError, match=ViTD2LConfig.attribute_map.get(field, field)):
        setattr(config, field, value)
    assert config.to_dict() == ViTD2LConfig().to_dict()


def test_config_json_keys_equal_those_the_v0_1_0_checkpoint_has(tmp_path):
    fixture = Path(__file__).parent / "fixtures" / "tiny_v0_1_0" / "config.json"
    stored = json.loads(fixture.read_text())
    config = ViTD2LConfig.from_pretrained(fixture.parent)
    config.architectures, config.auto_map = stored["architectures"], stored["auto_map"]
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved.pop("transformers_version"), stored.pop("transformers_version")
    assert saved == stored


def test_unknown_attn_implementation_in_model_constructor_and_from_pretrained(tmp_path):
    config = ViTD2LConfig(image_size=8, patch_size=4, hidden_size=8, num_attention_heads=2, intermediate_size=8)
    with pytest.raises(ValueError, match='attn_implementation="flash"'):
        ViTD2LForImageClassification(config, attn_implementation="flash")
    ViTD2LForImageClassification(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="bogus"):
        ViTD2LForImageClassification.from_pretrained(tmp_path, attn_implementation="bogus")
    for implementation in ("eager", "sdpa"):
        model = ViTD2LForImageClassification.from_pretrained(tmp_path, attn_implementation=implementation)
        assert model.config._attn_implementation == implementation


def test_other_label_count_gets_generic_labels():
    config = ViTD2LConfig(num_classes=3)
    assert config.num_labels == 3
    assert len(config.id2label) == 3


def test_round_trip_through_dict_keeps_everything():
    config = ViTD2LConfig(img_size=32, patch_size=8, num_hiddens=64, num_heads=4, pooling="mean", init_style="hf")
    again = ViTD2LConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()


def test_preset_is_the_book_config_and_takes_overrides():
    assert set(PRESETS) >= {"vit_d2l_fashion_mnist"}
    assert get_preset("vit_d2l_fashion_mnist").to_dict() == ViTD2LConfig().to_dict()
    assert get_preset("vit_d2l_fashion_mnist", num_blks=4).num_hidden_layers == 4
    with pytest.raises(ValueError, match="Unknown preset"):
        get_preset("vit_huge")
