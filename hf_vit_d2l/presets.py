"""Named model presets, in timm's spirit: one name instead of numbers scattered over scripts."""

from typing import Any

from transformers import PretrainedConfig

from .configuration_vit_d2l import ViTD2LConfig

PRESETS: dict[str, dict] = {
    # The book's Fashion-MNIST model ("Transformers for Vision", section "Training").
    "vit_d2l_fashion_mnist": {
        "image_size": 96,
        "patch_size": 16,
        "num_channels": 1,
        "hidden_size": 512,
        "intermediate_size": 2048,
        "num_attention_heads": 8,
        "num_hidden_layers": 2,
        "embedding_dropout_prob": 0.1,
        "block_dropout_prob": 0.1,
        "qkv_bias": False,
    },
    # The `quick` recipe's small model for a laptop CPU (chosen on a validation split; docs/experiments.md).
    "vit_d2l_fashion_mnist_quick": {
        "image_size": 28,
        "patch_size": 7,
        "num_channels": 1,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_attention_heads": 4,
        "num_hidden_layers": 4,
        "embedding_dropout_prob": 0.0,
        "block_dropout_prob": 0.0,
        "qkv_bias": False,
        "position_embedding_std": 0.02,
        "drop_path_rate": 0.1,
        "pooling": "mean",
        "test_time_flip": True,  # eval: the mean of the image's and its mirror's logits
    },
}


# The `improved` recipe's: the book's architecture with the usual ViT init of the position embeddings and stochastic
# depth (neither changes the parameters).
PRESETS["vit_d2l_fashion_mnist_improved"] = {
    **PRESETS["vit_d2l_fashion_mnist"],
    "position_embedding_std": 0.02,
    "drop_path_rate": 0.1,
}


def get_preset(name: str, **overrides) -> ViTD2LConfig:
    """A `ViTD2LConfig` for a named preset, with keyword overrides (canonical or book names)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    return ViTD2LConfig(**{**PRESETS[name], **overrides})


def _config_field_types() -> dict[str, type]:
    """Each config field's type, read from the defaults (book names included, as aliases of theirs)."""
    common = PretrainedConfig().to_dict()  # output_attentions, return_dict ...: not model fields
    types = {name: type(value) for name, value in ViTD2LConfig().to_dict().items() if name not in common}
    types.update(
        {alias: types[canonical] for alias, canonical in ViTD2LConfig.attribute_map.items() if canonical in types}
    )
    types["num_labels"] = types["num_classes"] = int
    return types


def parse_config_overrides(text: str | None) -> dict[str, Any]:
    """'hidden_size=64,num_blks=1,pooling=mean' -> {'hidden_size': 64, ...}, typed after `ViTD2LConfig`'s fields.

    Book and HF names are both accepted; an unknown field, a value of the wrong type or an item that is not
    key=value raises a `ValueError` saying which.
    """
    if not text:
        return {}
    types = _config_field_types()
    overrides = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ValueError(f"--config_overrides: {item!r} is not key=value (example: 'hidden_size=64').")
        key, raw = (part.strip() for part in item.split("=", 1))
        if key not in types:
            raise ValueError(
                f"--config_overrides: unknown config field {key!r}. Known fields: {', '.join(sorted(types))}."
            )
        kind = types[key]
        try:
            if kind is bool:
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                value = raw.lower() in ("true", "1")
            elif kind is int:
                value = int(raw)
            elif kind is float:
                value = float(raw)
            else:
                value = raw
        except ValueError:
            raise ValueError(f"--config_overrides: {key}={raw!r} is not a valid {kind.__name__}.") from None
        overrides[key] = value
    return overrides
