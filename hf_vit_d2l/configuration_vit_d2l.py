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

import inspect

from transformers import PretrainedConfig

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

ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")
POOLING_TYPES = ("cls", "mean")
INIT_STYLES = ("d2l", "hf")


class ViTD2LConfig(PretrainedConfig):
    r"""
    Configuration of [`ViTD2LModel`] / [`ViTD2LForImageClassification`], the book's `ViT`.

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
        hidden_act (`str`, defaults to `"gelu"`): MLP activation (exact erf GELU, as `nn.GELU()`).
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
        attn_implementation (`str`, optional): `"eager"` (the book's math) or `"sdpa"`.
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

    def __init__(
        self,
        image_size: int = 96,
        patch_size: int = 16,
        num_channels: int = 1,
        hidden_size: int = 512,
        intermediate_size: int = 2048,
        num_attention_heads: int = 8,
        num_hidden_layers: int = 2,
        embedding_dropout_prob: float = 0.1,
        block_dropout_prob: float = 0.1,
        qkv_bias: bool = False,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-5,
        pooling: str = "cls",
        init_style: str = "d2l",
        position_embedding_std: float = 1.0,
        initializer_range: float = 0.02,
        drop_path_rate: float = 0.0,
        test_time_flip: bool = False,
        **kwargs,
    ):
        # Resolve the book's names here (not only through attribute_map) so that validation sees them and a
        # clash such as `hidden_size=64, num_hiddens=128` is an error instead of a silent override.
        given = {
            "image_size": image_size,
            "hidden_size": hidden_size,
            "intermediate_size": intermediate_size,
            "num_attention_heads": num_attention_heads,
            "num_hidden_layers": num_hidden_layers,
            "embedding_dropout_prob": embedding_dropout_prob,
            "block_dropout_prob": block_dropout_prob,
            "qkv_bias": qkv_bias,
        }
        # The signature's own defaults: an alias only clashes with a canonical value the caller actually changed.
        defaults = {
            name: parameter.default
            for name, parameter in inspect.signature(ViTD2LConfig.__init__).parameters.items()
            if name in given
        }
        for alias, canonical in self.attribute_map.items():
            if alias not in kwargs:
                continue
            value = kwargs.pop(alias)
            if canonical == "num_labels":
                if "num_labels" in kwargs and kwargs["num_labels"] != value:
                    raise ValueError(f"num_classes={value!r} contradicts num_labels={kwargs['num_labels']!r}.")
                kwargs["num_labels"] = value
                continue
            if given[canonical] != defaults[canonical] and given[canonical] != value:
                raise ValueError(
                    f"{alias}={value!r} (the book's name) contradicts {canonical}={given[canonical]!r}; pass one."
                )
            given[canonical] = value

        self.image_size = given["image_size"]
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_size = given["hidden_size"]
        self.intermediate_size = given["intermediate_size"]
        self.num_attention_heads = given["num_attention_heads"]
        self.num_hidden_layers = given["num_hidden_layers"]
        self.embedding_dropout_prob = given["embedding_dropout_prob"]
        self.block_dropout_prob = given["block_dropout_prob"]
        self.qkv_bias = given["qkv_bias"]
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.pooling = pooling
        self.init_style = init_style
        self.position_embedding_std = position_embedding_std
        self.initializer_range = initializer_range
        self.drop_path_rate = drop_path_rate
        self.test_time_flip = test_time_flip

        num_labels = kwargs.pop("num_labels", None)
        if kwargs.get("id2label") is None:
            if num_labels is None or num_labels == len(FASHION_MNIST_LABELS):
                kwargs["id2label"] = dict(enumerate(FASHION_MNIST_LABELS))
                kwargs["label2id"] = {name: i for i, name in enumerate(FASHION_MNIST_LABELS)}
            else:
                if not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 1:
                    raise ValueError(f"num_labels must be an integer >= 1, got {num_labels!r}.")
                kwargs["num_labels"] = num_labels
        attn_implementation = kwargs.get("attn_implementation")
        if attn_implementation is not None and attn_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation={attn_implementation!r} is not supported by vit_d2l; "
                f"use one of {ATTENTION_IMPLEMENTATIONS}."
            )
        super().__init__(**kwargs)
        self._validate_vit_d2l()

    def _validate_vit_d2l(self):
        """Raise a `ValueError` naming the field and the value for anything the model cannot be built from."""

        def positive_int(name):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")

        for name in (
            "image_size",
            "patch_size",
            "num_channels",
            "hidden_size",
            "intermediate_size",
            "num_attention_heads",
            "num_hidden_layers",
        ):
            positive_int(name)
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
        for name in ("embedding_dropout_prob", "block_dropout_prob", "drop_path_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}.")
        for name in ("layer_norm_eps", "position_embedding_std", "initializer_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}.")
        if not isinstance(self.qkv_bias, bool):
            raise ValueError(f"qkv_bias (use_bias) must be True or False, got {self.qkv_bias!r}.")
        if not isinstance(self.test_time_flip, bool):
            raise ValueError(f"test_time_flip must be True or False, got {self.test_time_flip!r}.")
        if self.pooling not in POOLING_TYPES:
            raise ValueError(f"pooling={self.pooling!r} is not supported; use one of {POOLING_TYPES}.")
        if self.init_style not in INIT_STYLES:
            raise ValueError(f"init_style={self.init_style!r} is not supported; use one of {INIT_STYLES}.")
        if self.hidden_act != "gelu":
            raise ValueError(f"hidden_act={self.hidden_act!r} is not supported; the book's ViT uses 'gelu'.")

    @property
    def num_patches(self) -> int:
        """Patches per image, `(image_size // patch_size) ** 2` (the book's `PatchEmbedding.num_patches`)."""
        return (self.image_size // self.patch_size) ** 2


__all__ = ["ViTD2LConfig", "FASHION_MNIST_LABELS"]
