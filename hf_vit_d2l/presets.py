"""Named model presets, in timm's spirit: one name instead of numbers scattered over scripts."""

from typing import Any

from huggingface_hub.errors import StrictDataclassError

from .configuration_vit_d2l import ViTD2LConfig

PRESETS: dict[str, dict] = {
    # The book's Fashion-MNIST model ("Transformers for Vision", section "Training"): the config's defaults.
    "vit_d2l_fashion_mnist": {},
    # The `improved` recipe's: the book's architecture with the usual ViT init of the position embeddings and
    # stochastic depth (neither changes the parameters).
    "vit_d2l_fashion_mnist_improved": {"position_embedding_std": 0.02, "drop_path_rate": 0.1},
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
# The `hour` recipe's: the quick model with 49 tokens (patch 4 at 28 px) and 6 blocks of width 96, the best documented
# from-scratch Fashion-MNIST ViT's shape, and no drop path (chosen on the validation split; docs/experiments.md).
PRESETS["vit_d2l_fashion_mnist_hour"] = {
    **PRESETS["vit_d2l_fashion_mnist_quick"],
    "patch_size": 4,
    "hidden_size": 96,
    "intermediate_size": 192,
    "num_hidden_layers": 6,
    "drop_path_rate": 0.0,
}


def get_preset(name: str, **overrides) -> ViTD2LConfig:
    """A `ViTD2LConfig` for a named preset, with keyword overrides (canonical or book names)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    return ViTD2LConfig(**{**PRESETS[name], **overrides})


def parse_config_overrides(text: str | None) -> dict[str, Any]:
    """'hidden_size=64,num_blks=1,pooling=mean' -> {'hidden_size': 64, ...}, typed and checked by a default config's
    `update_from_string` (as transformers' examples apply `--config_overrides`); a `ValueError` says which item."""
    probe = ViTD2LConfig()
    overrides = {}
    for item in filter(None, (text or "").replace(" ", "").split(",")):  # no config value holds a space
        try:
            if item.count("=") != 1:
                raise ValueError("not one key=value pair")
            probe.update_from_string(item)
        except (ValueError, TypeError, StrictDataclassError) as err:  # the strict config's errors name the field
            problem = str(err.__cause__ or err).rstrip(".")
            raise ValueError(
                f"--config_overrides: {item!r}: {problem}. Give comma-separated key=value items of config fields, "
                "e.g. 'hidden_size=64,num_blks=1'."
            ) from None
        key = item.split("=")[0]
        overrides[key] = getattr(probe, key)
    return overrides
