"""Configuration of the Vision Transformer of *Dive into Deep Learning* ("Transformers for Vision"): Hugging Face's
field names (the Trainer, DeepSpeed and pipelines read them), the book's accepted as keywords and attributes."""

from dataclasses import fields
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.utils.type_validators import interval

# The names of the Hub dataset's ClassLabel feature (zalando-datasets/fashion_mnist), spaces included.
FASHION_MNIST_LABELS = [
    "T - shirt / top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

positive = interval(min=1)
probability = interval(min=0, max=1, exclude_max=True)
greater_than_zero = interval(min=0, exclude_min=True)


@strict
class ViTD2LConfig(PreTrainedConfig):
    r"""
    Configuration of [`ViTD2LModel`] / [`ViTD2LForImageClassification`], the book's `ViT`; the defaults are its
    Fashion-MNIST model. Every field is type- and range-checked on construction and on assignment; the constraints
    between fields (`validate_vit_d2l`) on construction and before saving. Fields not listed below mean what they
    mean in transformers' `ViTConfig`; `attribute_map` gives the book's names.

    Args:
        embedding_dropout_prob (`float`, defaults to 0.1): dropout after adding the position embeddings.
        block_dropout_prob (`float`, defaults to 0.1): dropout on the attention weights and after each MLP dense
            layer (none after the output projection, unlike HF ViT).
        qkv_bias (`bool`, defaults to `False`): bias of W_q, W_k, W_v **and** W_o.
        pooling (`str`, defaults to `"cls"`): classify the `<cls>` token (the book) or, with `"mean"`, the mean
            patch token (the book's exercise 2).
        init_style (`str`, defaults to `"d2l"`): PyTorch's default init and `randn` position embeddings of std
            `position_embedding_std` (the book), or `"hf"`: truncated normal of std `initializer_range`, as HF ViT.
        drop_path_rate (`float`, defaults to 0.0): stochastic depth on the residual branches (not in the book).
        test_time_flip (`bool`, defaults to `False`): in eval mode, average the logits of the image and of its
            left-right mirror (not in the book).
        num_labels / id2label / label2id: defaults to the ten Fashion-MNIST classes.
    """

    model_type = "vit_d2l"
    attribute_map = {
        "img_size": "image_size",
        "num_hiddens": "hidden_size",
        "mlp_num_hiddens": "intermediate_size",
        "num_heads": "num_attention_heads",
        "num_blks": "num_hidden_layers",
        "emb_dropout": "embedding_dropout_prob",
        "blk_dropout": "block_dropout_prob",
        "use_bias": "qkv_bias",
        "num_classes": "num_labels",
    }

    image_size: int = positive(default=96)
    patch_size: int = positive(default=16)
    num_channels: int = positive(default=1)
    hidden_size: int = positive(default=512)
    intermediate_size: int = positive(default=2048)
    num_attention_heads: int = positive(default=8)
    num_hidden_layers: int = positive(default=2)
    embedding_dropout_prob: float | int = probability(default=0.1)
    block_dropout_prob: float | int = probability(default=0.1)
    qkv_bias: bool = False
    hidden_act: Literal["gelu"] = "gelu"
    layer_norm_eps: float = greater_than_zero(default=1e-5)
    pooling: Literal["cls", "mean"] = "cls"
    init_style: Literal["d2l", "hf"] = "d2l"
    position_embedding_std: float | int = greater_than_zero(default=1.0)
    initializer_range: float = greater_than_zero(default=0.02)
    drop_path_rate: float | int = probability(default=0.0)
    test_time_flip: bool = False

    def __post_init__(self, **kwargs):
        # Resolve the book's names before the parent sets them through `attribute_map`, so that a clash such as
        # `hidden_size=64, num_hiddens=128` is an error, not a silent override (a default value never clashes).
        defaults = {field.name: field.default for field in fields(self)}
        for alias, canonical in self.attribute_map.items():
            if alias not in kwargs:
                continue
            value = kwargs.pop(alias)
            given = kwargs.get(canonical) if canonical == "num_labels" else getattr(self, canonical)
            if given != defaults.get(canonical) and given != value:
                raise ValueError(f"{alias}={value!r} (the book's name) contradicts {canonical}={given!r}; pass one.")
            if canonical == "num_labels":
                kwargs["num_labels"] = value
            else:
                setattr(self, canonical, value)
        if self.id2label is None and kwargs.get("num_labels", len(FASHION_MNIST_LABELS)) == len(FASHION_MNIST_LABELS):
            self.id2label = dict(enumerate(FASHION_MNIST_LABELS))
            self.label2id = {name: i for i, name in enumerate(FASHION_MNIST_LABELS)}
        super().__post_init__(**kwargs)

    def __setattr__(self, name, value):
        # Map a book name before the field validators look the name up, so `config.num_hiddens = 0` is checked too.
        super().__setattr__(self.attribute_map.get(name, name), value)

    def validate_vit_d2l(self):
        """Part of `@strict` validation: the constraints between fields that the model's shapes need."""
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be divisible by num_attention_heads="
                f"{self.num_attention_heads} (each head gets hidden_size / num_attention_heads units)."
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} must be divisible by patch_size={self.patch_size} "
                "(the patch embedding is a stride-patch_size convolution)."
            )
        if not self.num_labels or self.num_labels < 1:
            raise ValueError(f"num_labels must be an integer >= 1, got {self.num_labels!r}.")

    @property
    def num_patches(self) -> int:
        """Patches per image, `(image_size // patch_size) ** 2` (the book's `PatchEmbedding.num_patches`)."""
        return (self.image_size // self.patch_size) ** 2


__all__ = ["ViTD2LConfig", "FASHION_MNIST_LABELS"]
