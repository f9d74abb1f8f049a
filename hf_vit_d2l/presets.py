"""Named model presets, in timm's spirit: one name instead of numbers scattered over scripts."""

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
}


def get_preset(name: str, **overrides) -> ViTD2LConfig:
    """A `ViTD2LConfig` for a named preset, with keyword overrides (canonical or book names)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    return ViTD2LConfig(**{**PRESETS[name], **overrides})
