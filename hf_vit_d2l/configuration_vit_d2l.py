"""Configuration of the Vision Transformer of *Dive into Deep Learning* ("Transformers for Vision").

The defaults are the book's Fashion-MNIST model: 96x96 grayscale input, 16x16 patches (36 patches + ``<cls>``),
512 hidden units, 2048 MLP units, 8 heads, 2 blocks, dropout 0.1 after the position embeddings and inside every block.

Canonical names are Hugging Face's (``hidden_size``, ``num_attention_heads`` ...), because the Trainer, DeepSpeed's
auto-config and pipelines read them. The book's names are accepted as keywords and readable as attributes:

=================  ===============================  ==========================================================
book (d2l ``ViT``)  canonical                        note
=================  ===============================  ==========================================================
``img_size``        ``image_size``
``num_hiddens``     ``hidden_size``
``mlp_num_hiddens`` ``intermediate_size``
``num_heads``       ``num_attention_heads``
``num_blks``        ``num_hidden_layers``
``emb_dropout``     ``embedding_dropout_prob``           dropout after adding the position embeddings
``blk_dropout``     ``block_dropout_prob``               attention weights and after *each* MLP dense layer
``use_bias``        ``qkv_bias``                         unlike HF ViT, also switches the output projection's bias
``num_classes``     ``num_labels``
=================  ===============================  ==========================================================
"""

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
    Configuration of [`ViTD2LModel`] / [`ViTD2LForImageClassification`], the book's `ViT`.

    Every field is type- and range-checked on construction and on assignment (`config.pooling = "max"` raises
    `huggingface_hub.errors.StrictDataclassFieldValidationError` naming the field and the value); the checks that
    relate two fields (`hidden_size` divisible by `num_attention_heads`, `image_size` by `patch_size`) run on
    construction and before saving.

    Args:
        image_size (`int`, defaults to 96): side of the (square) input image. Book: `img_size`.
        patch_size (`int`, defaults to 16): side of a square patch; `image_size` must be a multiple of it.
        num_channels (`int`, defaults to 1): input channels (Fashion-MNIST is grayscale; the book's conv is lazy).
        hidden_size (`int`, defaults to 512): token width. Book: `num_hiddens`.
        intermediate_size (`int`, defaults to 2048): MLP width. Book: `mlp_num_hiddens`.
        num_attention_heads (`int`, defaults to 8): book: `num_heads`.
        num_hidden_layers (`int`, defaults to 2): number of `ViTBlock`s. Book: `num_blks`.
        embedding_dropout_prob (`float`, defaults to 0.1): dropout on `<cls>`+patches+position embeddings.
            Book: `emb_dropout`.
        block_dropout_prob (`float`, defaults to 0.1): dropout on the attention weights and after each of the two
            MLP dense layers. Book: `blk_dropout`. (HF ViT splits this differently and adds one after the output
            projection; the book has none there.)
        qkv_bias (`bool`, defaults to `False`): bias of W_q, W_k, W_v **and** W_o. Book: `use_bias`.
        hidden_act (`str`, defaults to `"gelu"`): MLP activation (exact erf GELU, as `nn.GELU()`); the only one.
        layer_norm_eps (`float`, defaults to 1e-5): `nn.LayerNorm`'s default, as in the book.
        pooling (`str`, defaults to `"cls"`): `"cls"` classifies the `<cls>` token (the book); `"mean"` the mean of
            the patch tokens (the book's exercise 2), normalised by the head LayerNorm after pooling.
        init_style (`str`, defaults to `"d2l"`): `"d2l"` is PyTorch's default Linear/Conv/LayerNorm init, a zero
            `<cls>` and `randn` position embeddings of std `position_embedding_std` (the book). `"hf"` is truncated
            normal weights of std `initializer_range` and zero biases, as transformers' ViT.
        position_embedding_std (`float`, defaults to 1.0): std of the position embedding init (the book's
            `torch.randn`; 0.02 is the usual ViT choice).
        initializer_range (`float`, defaults to 0.02): std for `init_style="hf"`.
        drop_path_rate (`float`, defaults to 0.0): stochastic depth on the residual branches (not in the book;
            0 reproduces it).
        test_time_flip (`bool`, defaults to `False`): in eval mode `ViTD2LForImageClassification` returns the mean
            of the logits of the image and of its left-right mirror (flip test-time augmentation: two forward
            passes per image; hidden states and attentions are the unflipped image's). Training is unchanged. Not
            in the book; the `quick` recipe's model turns it on.
        num_labels / id2label / label2id: defaults to the ten Fashion-MNIST classes. Book: `num_classes`.
        attn_implementation (`str`, optional): `"eager"` (the book's math) or `"sdpa"` (the default).
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
        # The book's names arrive here (they are not fields). Resolve them before the parent sets them through
        # `attribute_map`, so that a clash such as `hidden_size=64, num_hiddens=128` is an error instead of a silent
        # override. An alias only clashes with a canonical value the caller changed from its default.
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
