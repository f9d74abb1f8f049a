"""Converters between this package, the book's own `ViT` module and transformers' stock `ViTForImageClassification`.

* `from_d2l_state_dict(state_dict)`: a `state_dict()` of the book's `ViT` (d2l's module names: `cls_token`,
  `pos_embedding`, `patch_embedding.conv.*`, `blks.{i}.attention.W_q.weight`, `head.0.*`, `head.1.*` ...) into a
  `ViTD2LForImageClassification`. Sizes are read from the tensor shapes; only the number of heads cannot be, and
  defaults to the book's 8. `to_d2l_state_dict(model)` is the way back.
* `to_transformers_vit(model)`: export to stock `transformers.ViTForImageClassification` (no remote code needed to
  load it). Same logits in eval mode; see its docstring for what the stock class cannot express in training.
* `from_transformers_vit(model)`: the way back, for a stock ViT that uses the book's GELU.
* `load_d2l_checkpoint(path)` / `convert_d2l_checkpoint(...)`: what `scripts/convert_d2l_checkpoint.py` runs.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil, ViTModel

from .configuration_vit_d2l import ViTD2LConfig
from .image_processing_vit_d2l import ViTD2LImageProcessor
from .modeling_vit_d2l import ViTD2LForImageClassification, ViTD2LModel
from .utils import save_folder_atomically

logger = logging.getLogger(__name__)

BOOK_DEFAULT_NUM_HEADS = 8


class CheckpointConversionError(ValueError):
    """A checkpoint that cannot be converted: wrong keys, wrong shapes, or not a state dict at all."""


# ---------------------------------------------------------------------------------------------------------------------
# The book's `ViT` <-> ViTD2LForImageClassification
# ---------------------------------------------------------------------------------------------------------------------

# Our names of the book's modules outside the blocks. Inside a block both use the book's names (ln1, attention.W_q,
# mlp.dense1, ...), so `blks.{i}.` <-> `vit_d2l.encoder.layer.{i}.` is the whole difference there.
D2L_KEYS = {
    "cls_token": "vit_d2l.embeddings.cls_token",
    "pos_embedding": "vit_d2l.embeddings.position_embeddings",
    "patch_embedding.conv.weight": "vit_d2l.embeddings.patch_embeddings.projection.weight",
    "patch_embedding.conv.bias": "vit_d2l.embeddings.patch_embeddings.projection.bias",
    "head.0.weight": "vit_d2l.layernorm.weight",
    "head.0.bias": "vit_d2l.layernorm.bias",
    "head.1.weight": "classifier.weight",
    "head.1.bias": "classifier.bias",
}


def d2l_key_map(model: ViTD2LForImageClassification) -> dict[str, str]:
    """Book key -> our key for every parameter of `model` (the model's config decides which exist, e.g. biases)."""
    book_names = {ours: book for book, ours in D2L_KEYS.items()}
    return {
        book_names.get(key) or re.sub(r"^vit_d2l\.encoder\.layer\.(\d+)\.", r"blks.\1.", key): key
        for key in model.state_dict()
    }


def _as_state_dict(state_dict) -> dict[str, torch.Tensor]:
    """Check that this is a non-empty mapping of tensors; drop the `module.`/`_orig_mod.` prefixes that
    DistributedDataParallel and torch.compile add to every key."""
    if not isinstance(state_dict, Mapping):
        raise CheckpointConversionError(
            f"Expected a state dict (a mapping of parameter names to tensors), got {type(state_dict).__name__}."
        )
    if not state_dict:
        raise CheckpointConversionError("The state dict is empty: there are no weights to convert.")
    for key, value in state_dict.items():
        if isinstance(value, torch.nn.parameter.UninitializedParameter):
            raise CheckpointConversionError(
                f"{key} is an uninitialised lazy parameter: run one forward pass through the book's model before "
                "saving its state dict."
            )
        if not torch.is_tensor(value):
            raise CheckpointConversionError(
                f"Not a state dict of tensors: {key!r} is a {type(value).__name__}, not a tensor."
            )
    while prefix := next((p for p in ("module.", "_orig_mod.") if all(k.startswith(p) for k in state_dict)), None):
        state_dict = {key[len(prefix) :]: value for key, value in state_dict.items()}
    return dict(state_dict)


def infer_d2l_config_kwargs(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """The `ViTD2LConfig` sizes a book `ViT` state dict implies (everything but the number of heads).

    Only what fixes the sizes is read here; every other key and shape is checked against the built model.
    """
    state_dict = _as_state_dict(state_dict)
    try:
        hidden_size = state_dict["cls_token"].shape[-1]  # (1, 1, hidden)
        _, num_channels, patch_size, _ = state_dict["patch_embedding.conv.weight"].shape  # (hidden, C, P, P)
        num_patches = state_dict["pos_embedding"].shape[1] - 1  # (1, patches + 1, hidden)
        intermediate_size = state_dict["blks.0.mlp.dense1.weight"].shape[0]
        num_labels = state_dict["head.1.weight"].shape[0]
    except KeyError as err:
        raise CheckpointConversionError(
            f"Missing key {err}, which the book's ViT always has; this does not look like a state_dict() of d2l's "
            f"ViT. Keys present: {sorted(state_dict)[:20]}{' ...' if len(state_dict) > 20 else ''}"
        ) from None
    except (ValueError, IndexError):
        raise CheckpointConversionError(
            "Unexpected tensor shapes: cls_token should be (1, 1, hidden), patch_embedding.conv.weight (hidden, "
            "channels, patch, patch), pos_embedding (1, patches + 1, hidden)."
        ) from None
    side = round(max(num_patches, 0) ** 0.5)
    if num_patches < 1 or side * side != num_patches:
        raise CheckpointConversionError(
            f"pos_embedding has {num_patches + 1} positions, not 1 + a square number of patches: only square images "
            "are supported."
        )
    blocks = {int(m[1]) for key in state_dict if (m := re.match(r"blks\.(\d+)\.", key))}
    return {
        "image_size": side * patch_size,
        "patch_size": patch_size,
        "num_channels": num_channels,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": max(blocks) + 1,  # a gap in the indices shows up as missing keys
        "qkv_bias": "blks.0.attention.W_q.bias" in state_dict,
        "num_labels": num_labels,
    }


def _resolve_config(state_dict, config: ViTD2LConfig | Mapping | None) -> ViTD2LConfig:
    if isinstance(config, ViTD2LConfig):
        return config
    # Book names (num_heads=4) become canonical ones, so that they replace the inferred values.
    overrides = {ViTD2LConfig.attribute_map.get(key, key): value for key, value in (config or {}).items()}
    kwargs = {**infer_d2l_config_kwargs(state_dict), **overrides}
    if "num_attention_heads" not in overrides and kwargs["hidden_size"] % BOOK_DEFAULT_NUM_HEADS:
        raise CheckpointConversionError(
            f"The checkpoint's hidden size {kwargs['hidden_size']} is not divisible by the book's default of "
            f"{BOOK_DEFAULT_NUM_HEADS} heads, and the number of heads cannot be read from the weights: pass it "
            "(config={'num_attention_heads': N}, or --num_heads N on the command line)."
        )
    try:
        return ViTD2LConfig(**{"num_attention_heads": BOOK_DEFAULT_NUM_HEADS, **kwargs})
    except (ValueError, TypeError, StrictDataclassError) as err:  # the strict config names the field and the value
        raise CheckpointConversionError(f"Invalid config for this checkpoint: {err.__cause__ or err}") from None


def from_d2l_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: ViTD2LConfig | Mapping | None = None
) -> ViTD2LForImageClassification:
    """Load a `state_dict()` of the book's `ViT` module into a `ViTD2LForImageClassification`.

    Args:
        state_dict: the book model's `state_dict()` (keys `cls_token`, `pos_embedding`, `patch_embedding.conv.*`,
            `blks.{i}.{ln1,ln2}.*`, `blks.{i}.attention.W_{q,k,v,o}.weight` (+ `.bias` with `use_bias=True`),
            `blks.{i}.mlp.dense{1,2}.*`, `head.0.*`, `head.1.*`). `module.`/`_orig_mod.` prefixes (DDP,
            `torch.compile`) are removed.
        config: `None` to read every size from the tensor shapes (image size, patch size, channels, hidden and MLP
            sizes, number of blocks, `use_bias`, number of classes), with the book's 8 heads and 0.1 dropouts; a
            dict of overrides on top of that (e.g. `{"num_heads": 4}`, canonical or book names); or a full
            `ViTD2LConfig`, which must agree with the shapes.

    Returns:
        The converted model in eval mode. Its logits equal the book module's in eval mode (to float rounding).

    Raises:
        CheckpointConversionError (a `ValueError`): missing or unexpected keys (all listed), shape mismatches (all
            listed), or input that is not a state dict of tensors.
    """
    state_dict = _as_state_dict(state_dict)
    config = _resolve_config(state_dict, config)
    model = ViTD2LForImageClassification(config)
    mapping = d2l_key_map(model)
    missing, unexpected = sorted(set(mapping) - set(state_dict)), sorted(set(state_dict) - set(mapping))
    if missing or unexpected:
        lines = [
            f"{kind} keys ({len(keys)}): {', '.join(keys)}"
            for kind, keys in [("missing", missing), ("unexpected", unexpected)]
            if keys
        ]
        raise CheckpointConversionError(
            f"The state dict does not match the book's ViT with num_blks={config.num_hidden_layers}, "
            f"use_bias={config.qkv_bias}:\n  " + "\n  ".join(lines)
        )
    target = model.state_dict()
    mismatched = [
        f"{key}: checkpoint {tuple(value.shape)}, config {tuple(target[mapping[key]].shape)}"
        for key, value in state_dict.items()
        if value.shape != target[mapping[key]].shape
    ]
    if mismatched:
        raise CheckpointConversionError(
            "Shape mismatch between the checkpoint and the config (check the config / overrides):\n  "
            + "\n  ".join(mismatched)
        )
    model.load_state_dict({mapping[k]: v.to(target[mapping[k]].dtype) for k, v in state_dict.items()}, strict=True)
    return model.eval()


def to_d2l_state_dict(model: ViTD2LForImageClassification) -> dict[str, torch.Tensor]:
    """The inverse of `from_d2l_state_dict`: a state dict that the book's `ViT` module loads with `strict=True`."""
    if model.config.pooling != "cls":
        raise ValueError("The book's ViT classifies the <cls> token; a pooling='mean' model has no book equivalent.")
    ours = model.state_dict()
    return {book_key: ours[our_key].detach().clone() for book_key, our_key in d2l_key_map(model).items()}


# ---------------------------------------------------------------------------------------------------------------------
# ViTD2L <-> transformers' stock ViT
# ---------------------------------------------------------------------------------------------------------------------

# Stock ViT's per-block module names, ours -> theirs. transformers renamed them during v5 (`encoder.layer.{i}.
# attention.attention.query` became `layers.{i}.attention.q_proj`); both are known and the installed one is picked.
STOCK_VIT_LAYOUTS = [
    {"block": "layers.{i}.", "ln1": "layernorm_before", "ln2": "layernorm_after", "attention.W_q": "attention.q_proj",
     "attention.W_k": "attention.k_proj", "attention.W_v": "attention.v_proj", "attention.W_o": "attention.o_proj",
     "mlp.dense1": "mlp.fc1", "mlp.dense2": "mlp.fc2"},
    {"block": "encoder.layer.{i}.", "ln1": "layernorm_before", "ln2": "layernorm_after",
     "attention.W_q": "attention.attention.query", "attention.W_k": "attention.attention.key",
     "attention.W_v": "attention.attention.value", "attention.W_o": "attention.output.dense",
     "mlp.dense1": "intermediate.dense", "mlp.dense2": "output.dense"},
]  # fmt: skip


# Fields that mean the same in ViTConfig and ViTD2LConfig, under the same names.
SHARED_CONFIG_FIELDS = (
    "image_size", "patch_size", "num_channels", "hidden_size", "intermediate_size", "num_attention_heads",
    "num_hidden_layers", "qkv_bias", "layer_norm_eps", "initializer_range", "id2label", "label2id",
)  # fmt: skip


def _stock_key_function(stock_keys: set[str], with_head: bool):
    """A function from our state-dict keys to the installed transformers' stock ViT keys."""

    def for_layout(layout):
        def stock_key(key: str) -> str:
            if with_head:
                key = key.replace("vit_d2l.", "vit.", 1)
            match = re.search(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$", key)
            if match is None:
                return key
            return f"{key[: match.start()]}{layout['block'].format(i=match[1])}{layout[match[2]]}.{match[3]}"

        return stock_key

    probe = f"{'vit_d2l.' if with_head else ''}encoder.layer.0.ln1.weight"
    for layout in STOCK_VIT_LAYOUTS:
        if for_layout(layout)(probe) in stock_keys:
            return for_layout(layout)
    raise RuntimeError(
        "This transformers version lays out ViT's weights in a way hf_vit_d2l does not know "
        f"(keys such as {sorted(stock_keys)[:8]}); please report it with `transformers.__version__`."
    )


def to_transformers_vit(model: ViTD2LForImageClassification | ViTD2LModel) -> ViTForImageClassification | ViTModel:
    """Export to transformers' stock `ViTForImageClassification` (or `ViTModel` for a `ViTD2LModel`).

    The result needs no remote code: `save_pretrained` it and any transformers install loads it with
    `AutoModelForImageClassification.from_pretrained(folder)`. In eval mode its logits equal ours (to float
    rounding): the forward math is the same (pre-norm blocks, `<cls>` after the final LayerNorm, exact GELU,
    `layer_norm_eps` carried over).

    What stock ViT cannot express, so training the exported model is *not* training the book's model:

    * **Dropout placement.** The book drops out the attention weights, after *each* MLP dense layer (also between
      dense1 and dense2), and after adding the position embeddings. Stock ViT drops out the attention weights
      (`attention_probs_dropout_prob`), the attention output after the output projection and the MLP output (one
      `hidden_dropout_prob`), and the embeddings (the same `hidden_dropout_prob`): there is no dropout between the
      MLP's two dense layers, there is one after W_o that the book lacks, and the embedding dropout cannot differ from
      the block dropout (the export uses `block_dropout_prob` for both and warns if they differ).
    * **Output-projection bias.** Stock ViT's attention output projection always has a bias. With the book's
      `use_bias=False` the export sets it to zero, but it is a trainable parameter there and will move in training.
    * **Pooling.** Stock ViT classifies the `<cls>` token only: `pooling="mean"` raises a `ValueError`.
    * **Stochastic depth** (`drop_path_rate`, not in the book) and **flip test-time augmentation**
      (`test_time_flip`, not in the book) have no stock counterpart: the export is exact for one view in eval mode
      (a warning is logged).
    * **Initialisation** (`init_style`, `position_embedding_std`) only matters for new models; stock ViT initialises
      with truncated normals of std `initializer_range`.
    """
    config = model.config
    if config.pooling != "cls":
        raise ValueError(
            "pooling='mean' cannot be exported: stock transformers ViT classifies the <cls> token only "
            "(ViTForImageClassification uses sequence_output[:, 0]). Export a pooling='cls' model."
        )
    lost = {
        "drop_path_rate": config.drop_path_rate > 0,
        "test_time_flip": config.test_time_flip,
        "embedding_dropout_prob != block_dropout_prob": config.embedding_dropout_prob != config.block_dropout_prob,
    }
    if any(lost.values()):
        logger.warning(
            "Stock ViT has no counterpart of %s: the export predicts from one view with the same logits in eval mode, "
            "and trains without stochastic depth, with block_dropout_prob for the embeddings too.",
            ", ".join(name for name, flag in lost.items() if flag),
        )
    stock_config = ViTConfig(
        **{name: getattr(config, name) for name in SHARED_CONFIG_FIELDS},
        hidden_act="gelu",  # exact erf GELU, as the book's nn.GELU()
        hidden_dropout_prob=config.block_dropout_prob,
        attention_probs_dropout_prob=config.block_dropout_prob,
    )
    with_head = isinstance(model, ViTD2LForImageClassification)
    stock = ViTForImageClassification(stock_config) if with_head else ViTModel(stock_config, add_pooling_layer=False)
    stock_state = stock.state_dict()
    stock_key = _stock_key_function(set(stock_state), with_head)
    new_state = {stock_key(key): value.detach().clone() for key, value in model.state_dict().items()}
    for key in set(stock_state) - set(new_state):
        # The book's W_o has no bias with use_bias=False; stock ViT always has one: make it zero.
        if not re.search(r"attention\.(o_proj|output\.dense)\.bias$", key):
            raise RuntimeError(f"Internal key mapping error: {key} has no counterpart in {type(model).__name__}.")
        new_state[key] = torch.zeros_like(stock_state[key])
    stock.load_state_dict({k: v.to(stock_state[k].dtype) for k, v in new_state.items()}, strict=True)
    return stock.eval()


def _square(value, name: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"Only square {name} is supported, got {value!r}.")
        value = value[0]
    return int(value)


def from_transformers_vit(
    stock: ViTForImageClassification | ViTModel,
) -> ViTD2LForImageClassification | ViTD2LModel:
    """Import a stock transformers ViT (`ViTForImageClassification`, or `ViTModel` without its pooler).

    Requires square images and patches and `hidden_act="gelu"`. Stock ViT's attention output projection always has
    a bias; with `qkv_bias=False` and an all-zero output bias (an export of a book model) the result has the book's
    `use_bias=False`; with a non-zero one the result gets `qkv_bias=True` with zero W_q/W_k/W_v biases, which
    computes the same function (a warning is logged). A `ViTModel`'s pooler (dense + tanh) has no counterpart and is
    dropped. Stock ViT's `hidden_dropout_prob` becomes the embedding dropout and `attention_probs_dropout_prob` the
    block dropout (the book has one dropout rate per place, not per kind).
    """
    stock_config = stock.config
    if stock_config.hidden_act != "gelu":
        raise ValueError(
            f"hidden_act={stock_config.hidden_act!r} cannot be expressed: the book's ViT uses exact gelu."
        )
    with_head = isinstance(stock, ViTForImageClassification)
    stock_state = stock.state_dict()
    stock_key = _stock_key_function(set(stock_state), with_head)
    layers = stock_config.num_hidden_layers
    prefix = "vit_d2l." if with_head else ""
    o_biases = [stock_state[stock_key(f"{prefix}encoder.layer.{i}.attention.W_o.bias")] for i in range(layers)]
    qkv_bias = bool(stock_config.qkv_bias)
    if not qkv_bias and any(bool(b.abs().max() > 0) for b in o_biases):
        logger.warning(
            "The stock ViT has a non-zero attention output bias but no q/k/v biases: importing with qkv_bias=True "
            "and zero W_q/W_k/W_v biases (same function)."
        )
        qkv_bias = True
    fields = {name: getattr(stock_config, name) for name in SHARED_CONFIG_FIELDS}
    fields.update(image_size=_square(fields["image_size"], "image_size"), qkv_bias=qkv_bias)
    fields["patch_size"] = _square(fields["patch_size"], "patch_size")
    config = ViTD2LConfig(
        **fields,
        embedding_dropout_prob=stock_config.hidden_dropout_prob,
        block_dropout_prob=stock_config.attention_probs_dropout_prob,
        position_embedding_std=stock_config.initializer_range,
        init_style="hf",
    )
    model = ViTD2LForImageClassification(config) if with_head else ViTD2LModel(config)
    new_state = {}
    for key, target in model.state_dict().items():
        value = stock_state.get(stock_key(key))
        new_state[key] = torch.zeros_like(target) if value is None else value.detach().clone().to(target.dtype)
    model.load_state_dict(new_state, strict=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------------
# Files: what scripts/convert_d2l_checkpoint.py runs
# ---------------------------------------------------------------------------------------------------------------------


def load_d2l_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a `.pt`/`.pth` file saved with `torch.save(model.state_dict(), path)` (or a dict holding the state dict
    under `"state_dict"`, `"model"` or `"model_state_dict"`, as training loops save it), with
    `torch.load(weights_only=True)`: pickled modules and other code are refused."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "not found"
        raise FileNotFoundError(f"Checkpoint {what}: {path}. Pass the .pt file written by torch.save(state_dict).")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError, RuntimeError, EOFError ... depending on the damage
        first_line = re.sub(r"\x1b\[[0-9;]*m", "", (str(error).splitlines() or [""])[0])  # no terminal colours
        raise CheckpointConversionError(
            f"Could not read {path} with torch.load(weights_only=True): {type(error).__name__}: {first_line}. The "
            "file must hold a state dict (tensors only) saved with torch.save(model.state_dict(), path); whole "
            "pickled modules are refused for safety."
        ) from None
    if isinstance(obj, Mapping):
        obj = next(
            (obj[k] for k in ("state_dict", "model", "model_state_dict") if isinstance(obj.get(k), Mapping)), obj
        )
    if not isinstance(obj, Mapping) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        detail = f" with keys {sorted(map(str, obj))[:10]}" if isinstance(obj, Mapping) else ""
        raise CheckpointConversionError(
            f"{path} holds a {type(obj).__name__}{detail}, not a state dict of tensors. Save the book model with "
            "torch.save(model.state_dict(), path), or a dict with the state dict under 'state_dict' or 'model'."
        )
    return dict(obj)


def convert_d2l_checkpoint(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    config_overrides: Mapping | None = None,
    to_transformers: bool = False,
) -> str:
    """Convert a book `ViT` `.pt` state dict into a `save_pretrained` folder (model + image processor).

    With `to_transformers=True` the folder holds a stock `ViTForImageClassification` and `ViTImageProcessorPil`
    (loads without remote code); otherwise a `ViTD2LForImageClassification` with its code files and
    `ViTD2LImageProcessor` (loads with `trust_remote_code=True`, or directly after `import hf_vit_d2l`).
    The folder is written through a staging folder, so an interrupted conversion leaves no half-written model.
    Returns the absolute output folder.
    """
    model = from_d2l_state_dict(load_d2l_checkpoint(checkpoint), config=dict(config_overrides or {}) or None)
    size = {"height": model.config.image_size, "width": model.config.image_size}
    if to_transformers:
        model, processor = to_transformers_vit(model), ViTImageProcessorPil(size=size, do_normalize=False)
    elif model.config.num_channels in (1, 3):
        processor = ViTD2LImageProcessor(size=size, num_channels=model.config.num_channels)
    else:
        processor = None
        logger.warning(
            "No image processor saved: it supports 1 or 3 channels, the model has %d.", model.config.num_channels
        )

    def write(folder: str) -> None:
        model.save_pretrained(folder)
        if processor is not None:
            processor.save_pretrained(folder)

    return save_folder_atomically(output_dir, write)


__all__ = [
    "CheckpointConversionError",
    "convert_d2l_checkpoint",
    "d2l_key_map",
    "from_d2l_state_dict",
    "from_transformers_vit",
    "infer_d2l_config_kwargs",
    "load_d2l_checkpoint",
    "to_d2l_state_dict",
    "to_transformers_vit",
]
