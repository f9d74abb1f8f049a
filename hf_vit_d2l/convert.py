"""Converters between this package, the book's own `ViT` module and transformers' stock `ViTForImageClassification`.

* `from_d2l_state_dict(state_dict)`: a `state_dict()` of the book's `ViT` (d2l's module names: `cls_token`,
  `pos_embedding`, `patch_embedding.conv.*`, `blks.{i}.attention.W_q.weight`, `head.0.*`, `head.1.*` ...) into a
  `ViTD2LForImageClassification`. Sizes are read from the tensor shapes; only the number of heads cannot be, and
  defaults to the book's 8.
* `to_transformers_vit(model)`: export to stock `transformers.ViTForImageClassification` (no remote code needed to
  load it). Same logits in eval mode; see its docstring for what the stock class cannot express in training.
* `from_transformers_vit(model)`: the way back, for a stock ViT that uses the book's GELU.
* `load_d2l_checkpoint(path)` / `convert_d2l_checkpoint(...)`: what `scripts/convert_d2l_checkpoint.py` runs.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping

import torch
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil, ViTModel

from .configuration_vit_d2l import FASHION_MNIST_LABELS, ViTD2LConfig
from .image_processing_vit_d2l import ViTD2LImageProcessor
from .modeling_vit_d2l import ViTD2LForImageClassification, ViTD2LModel
from .presets import parse_config_overrides

logger = logging.getLogger(__name__)

BOOK_DEFAULT_NUM_HEADS = 8


class CheckpointConversionError(ValueError):
    """A checkpoint that cannot be converted: wrong keys, wrong shapes, or not a state dict at all."""


# ---------------------------------------------------------------------------------------------------------------------
# The book's `ViT` -> ViTD2LForImageClassification
# ---------------------------------------------------------------------------------------------------------------------

# (book key pattern, our key pattern); `{i}` is a block index.
_D2L_GLOBAL_KEYS = {
    "cls_token": "vit_d2l.embeddings.cls_token",
    "pos_embedding": "vit_d2l.embeddings.position_embeddings",
    "patch_embedding.conv.weight": "vit_d2l.embeddings.patch_embeddings.projection.weight",
    "patch_embedding.conv.bias": "vit_d2l.embeddings.patch_embeddings.projection.bias",
    "head.0.weight": "vit_d2l.layernorm.weight",
    "head.0.bias": "vit_d2l.layernorm.bias",
    "head.1.weight": "classifier.weight",
    "head.1.bias": "classifier.bias",
}
_D2L_BLOCK_KEYS = [
    "ln1.weight",
    "ln1.bias",
    "attention.W_q.weight",
    "attention.W_k.weight",
    "attention.W_v.weight",
    "attention.W_o.weight",
    "ln2.weight",
    "ln2.bias",
    "mlp.dense1.weight",
    "mlp.dense1.bias",
    "mlp.dense2.weight",
    "mlp.dense2.bias",
]
_D2L_BLOCK_BIAS_KEYS = ["attention.W_q.bias", "attention.W_k.bias", "attention.W_v.bias", "attention.W_o.bias"]
# Prefixes that wrappers add to every key: DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def d2l_key_map(num_blocks: int, use_bias: bool) -> dict[str, str]:
    """The complete book-key -> our-key mapping for a book `ViT` with `num_blocks` blocks."""
    mapping = dict(_D2L_GLOBAL_KEYS)
    block_keys = _D2L_BLOCK_KEYS + (_D2L_BLOCK_BIAS_KEYS if use_bias else [])
    for i in range(num_blocks):
        for key in block_keys:
            mapping[f"blks.{i}.{key}"] = f"vit_d2l.encoder.layer.{i}.{key}"
    return mapping


def _strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state_dict = dict(state_dict)
    changed = True
    while changed and state_dict:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in state_dict):
                state_dict = {key[len(prefix) :]: value for key, value in state_dict.items()}
                changed = True
    return state_dict


def _check_state_dict(state_dict) -> dict[str, torch.Tensor]:
    if not isinstance(state_dict, Mapping):
        raise CheckpointConversionError(
            f"Expected a state dict (a mapping of parameter names to tensors), got {type(state_dict).__name__}."
        )
    if not state_dict:
        raise CheckpointConversionError("The state dict is empty: there are no weights to convert.")
    state_dict = _strip_wrapper_prefixes(state_dict)
    bad = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            bad[repr(key)] = f"key of type {type(key).__name__}"
        elif isinstance(value, torch.nn.parameter.UninitializedParameter):
            bad[key] = "an uninitialised lazy parameter (run one forward pass through the book's model before saving)"
        elif not torch.is_tensor(value):
            bad[key] = f"{type(value).__name__}, not a tensor"
    if bad:
        details = "; ".join(f"{k}: {v}" for k, v in sorted(bad.items()))
        raise CheckpointConversionError(f"Not a state dict of tensors: {details}.")
    return state_dict


def _require(state_dict: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state_dict:
        raise CheckpointConversionError(
            f"Missing key {key!r}, which the book's ViT always has; this does not look like a state_dict() of "
            f"d2l's ViT. Keys present: {sorted(state_dict)[:20]}{' ...' if len(state_dict) > 20 else ''}"
        )
    return state_dict[key]


def infer_d2l_config_kwargs(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """The `ViTD2LConfig` sizes a book `ViT` state dict implies (everything but the number of heads)."""
    state_dict = _check_state_dict(state_dict)
    cls_token = _require(state_dict, "cls_token")
    conv = _require(state_dict, "patch_embedding.conv.weight")
    pos = _require(state_dict, "pos_embedding")
    head = _require(state_dict, "head.1.weight")
    if cls_token.dim() != 3 or conv.dim() != 4 or pos.dim() != 3 or head.dim() != 2:
        raise CheckpointConversionError(
            "Unexpected tensor ranks: cls_token should be (1, 1, hidden), patch_embedding.conv.weight "
            "(hidden, channels, patch, patch), pos_embedding (1, patches + 1, hidden), head.1.weight "
            f"(classes, hidden); got {tuple(cls_token.shape)}, {tuple(conv.shape)}, {tuple(pos.shape)}, "
            f"{tuple(head.shape)}."
        )
    hidden_size = cls_token.shape[-1]
    _, num_channels, patch_h, patch_w = conv.shape
    if patch_h != patch_w:
        raise CheckpointConversionError(f"Only square patches are supported, got a {patch_h}x{patch_w} patch conv.")
    num_patches = pos.shape[1] - 1
    side = round(num_patches**0.5)
    if num_patches < 1 or side * side != num_patches:
        raise CheckpointConversionError(
            f"pos_embedding has {pos.shape[1]} positions, which is not 1 + a square number of patches; only square "
            "images are supported."
        )
    blocks = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"blks\.(\d+)\.", k))})
    if not blocks:
        raise CheckpointConversionError("The state dict has no `blks.{i}.*` keys: the book's ViT has >= 1 block.")
    if blocks != list(range(len(blocks))):
        raise CheckpointConversionError(f"Block indices must be 0..n-1 without gaps, got {blocks}.")
    return {
        "image_size": side * patch_h,
        "patch_size": patch_h,
        "num_channels": num_channels,
        "hidden_size": hidden_size,
        "intermediate_size": _require(state_dict, "blks.0.mlp.dense1.weight").shape[0],
        "num_hidden_layers": len(blocks),
        "qkv_bias": "blks.0.attention.W_q.bias" in state_dict,
        "num_labels": head.shape[0],
    }


def _resolve_config(state_dict, config: ViTD2LConfig | Mapping | None) -> ViTD2LConfig:
    inferred = infer_d2l_config_kwargs(state_dict)
    if isinstance(config, ViTD2LConfig):
        return config
    overrides = dict(config or {})
    kwargs = {**inferred, **overrides}
    heads_given = any(k in overrides for k in ("num_attention_heads", "num_heads"))
    if not heads_given:
        kwargs["num_attention_heads"] = BOOK_DEFAULT_NUM_HEADS
        if kwargs.get("hidden_size", inferred["hidden_size"]) % BOOK_DEFAULT_NUM_HEADS:
            raise CheckpointConversionError(
                f"The checkpoint's hidden size {inferred['hidden_size']} is not divisible by the book's default of "
                f"{BOOK_DEFAULT_NUM_HEADS} heads, and the number of heads cannot be read from the weights: pass it "
                "(config={'num_attention_heads': N}, or --num_heads N on the command line)."
            )
    if kwargs.get("num_labels") not in (None, len(FASHION_MNIST_LABELS)) and "id2label" not in kwargs:
        kwargs["id2label"] = {i: f"LABEL_{i}" for i in range(kwargs["num_labels"])}
    # An alias in the overrides (num_heads=4) wins over the inferred canonical value.
    for alias, canonical in ViTD2LConfig.attribute_map.items():
        if alias in kwargs and canonical in kwargs and canonical not in overrides:
            del kwargs[canonical]
    return ViTD2LConfig(**kwargs)


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
    state_dict = _check_state_dict(state_dict)
    config = _resolve_config(state_dict, config)
    mapping = d2l_key_map(config.num_hidden_layers, config.qkv_bias)
    missing = sorted(set(mapping) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(mapping))
    if missing or unexpected:
        lines = []
        if missing:
            lines.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        raise CheckpointConversionError(
            "The state dict does not match the book's ViT with "
            f"num_blks={config.num_hidden_layers}, use_bias={config.qkv_bias}:\n  " + "\n  ".join(lines)
        )
    model = ViTD2LForImageClassification(config)
    target = model.state_dict()
    converted = {mapping[key]: value for key, value in state_dict.items()}
    mismatched = [
        f"{key}: checkpoint {tuple(value.shape)}, config {tuple(target[mapping[key]].shape)}"
        for key, value in state_dict.items()
        if tuple(value.shape) != tuple(target[mapping[key]].shape)
    ]
    if mismatched:
        raise CheckpointConversionError(
            "Shape mismatch between the checkpoint and the config (check the config / overrides):\n  "
            + "\n  ".join(mismatched)
        )
    model.load_state_dict({k: v.to(target[k].dtype) for k, v in converted.items()}, strict=True)
    return model.eval()


def to_d2l_state_dict(model: ViTD2LForImageClassification) -> dict[str, torch.Tensor]:
    """The inverse of `from_d2l_state_dict`: a state dict that the book's `ViT` module loads with `strict=True`."""
    if not isinstance(model, ViTD2LForImageClassification):
        raise TypeError(f"Expected a ViTD2LForImageClassification, got {type(model).__name__}.")
    if model.config.pooling != "cls":
        raise ValueError("The book's ViT classifies the <cls> token; a pooling='mean' model has no book equivalent.")
    ours = model.state_dict()
    mapping = d2l_key_map(model.config.num_hidden_layers, model.config.qkv_bias)
    return {book_key: ours[our_key].detach().clone() for book_key, our_key in mapping.items()}


# ---------------------------------------------------------------------------------------------------------------------
# ViTD2L <-> transformers' stock ViT
# ---------------------------------------------------------------------------------------------------------------------

# Stock ViT's per-block parameter names, our name -> theirs. transformers renamed them during v5 (`encoder.layer.{i}.
# attention.attention.query` became `layers.{i}.attention.q_proj`), so both layouts are known and the one the installed
# version builds is picked; loading a saved folder in another version is transformers' own key conversion.
_HF_VIT_LAYOUTS = {
    "layers": {
        "block": "layers.{i}.",
        "ln1": "layernorm_before",
        "ln2": "layernorm_after",
        "attention.W_q": "attention.q_proj",
        "attention.W_k": "attention.k_proj",
        "attention.W_v": "attention.v_proj",
        "attention.W_o": "attention.o_proj",
        "mlp.dense1": "mlp.fc1",
        "mlp.dense2": "mlp.fc2",
    },
    "encoder.layer": {
        "block": "encoder.layer.{i}.",
        "ln1": "layernorm_before",
        "ln2": "layernorm_after",
        "attention.W_q": "attention.attention.query",
        "attention.W_k": "attention.attention.key",
        "attention.W_v": "attention.attention.value",
        "attention.W_o": "attention.output.dense",
        "mlp.dense1": "intermediate.dense",
        "mlp.dense2": "output.dense",
    },
}


def _hf_key_map(hf_keys: set[str], base_prefix: str, num_layers: int, with_head: bool) -> dict[str, str]:
    """Our state-dict key -> stock ViT key, for the layout whose keys `hf_keys` has (both directions need it)."""
    ours_prefix = "vit_d2l." if with_head else ""
    for layout in _HF_VIT_LAYOUTS.values():
        mapping = {
            f"{ours_prefix}embeddings.cls_token": f"{base_prefix}embeddings.cls_token",
            f"{ours_prefix}embeddings.position_embeddings": f"{base_prefix}embeddings.position_embeddings",
            f"{ours_prefix}layernorm.weight": f"{base_prefix}layernorm.weight",
            f"{ours_prefix}layernorm.bias": f"{base_prefix}layernorm.bias",
        }
        for suffix in ("weight", "bias"):
            mapping[f"{ours_prefix}embeddings.patch_embeddings.projection.{suffix}"] = (
                f"{base_prefix}embeddings.patch_embeddings.projection.{suffix}"
            )
        if with_head:
            mapping["classifier.weight"] = "classifier.weight"
            mapping["classifier.bias"] = "classifier.bias"
        for i in range(num_layers):
            block = base_prefix + layout["block"].format(i=i)
            for ours, theirs in layout.items():
                if ours == "block":
                    continue
                for suffix in ("weight", "bias"):
                    mapping[f"{ours_prefix}encoder.layer.{i}.{ours}.{suffix}"] = f"{block}{theirs}.{suffix}"
        # Attention biases depend on qkv_bias; every other parameter must be there.
        if all(theirs in hf_keys for ours, theirs in mapping.items() if not re.search(r"W_[qkvo]\.bias$", ours)):
            return mapping
    raise RuntimeError(
        "This transformers version lays out ViT's weights in a way hf_vit_d2l does not know "
        f"(keys such as {sorted(hf_keys)[:8]}); please report it with `transformers.__version__`."
    )


def _stock_vit_config(config: ViTD2LConfig) -> ViTConfig:
    if config.embedding_dropout_prob != config.block_dropout_prob:
        logger.warning(
            "Stock ViT has one hidden_dropout_prob for the embeddings and the blocks; using block_dropout_prob=%s "
            "(embedding_dropout_prob=%s is dropped). Inference is unaffected.",
            config.block_dropout_prob,
            config.embedding_dropout_prob,
        )
    return ViTConfig(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        hidden_act="gelu",  # exact erf GELU, as the book's nn.GELU()
        hidden_dropout_prob=config.block_dropout_prob,
        attention_probs_dropout_prob=config.block_dropout_prob,
        initializer_range=config.initializer_range,
        layer_norm_eps=config.layer_norm_eps,
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_channels=config.num_channels,
        qkv_bias=config.qkv_bias,
        id2label=dict(config.id2label),
        label2id=dict(config.label2id),
    )


def to_transformers_vit(model: ViTD2LForImageClassification | ViTD2LModel) -> ViTForImageClassification | ViTModel:
    """Export to transformers' stock `ViTForImageClassification` (or `ViTModel` for a `ViTD2LModel`).

    The result needs no remote code: `save_pretrained` it and any transformers install loads it with
    `AutoModelForImageClassification.from_pretrained(folder)`. In eval mode its logits equal ours (to float
    rounding, checked to 1e-5 in the tests): the forward math is the same (pre-norm blocks, `<cls>` after the final
    LayerNorm, exact GELU, `layer_norm_eps` carried over).

    What stock ViT cannot express, so training the exported model is *not* training the book's model:

    * **Dropout placement.** The book drops out the attention weights, after *each* MLP dense layer (also between
      dense1 and dense2), and after adding the position embeddings. Stock ViT drops out the attention weights
      (`attention_probs_dropout_prob`), the attention output after the output projection and the MLP output (one
      `hidden_dropout_prob`), and the embeddings (the same `hidden_dropout_prob`): there is no dropout between the
      MLP's two dense layers, there is one after W_o that the book lacks, and the embedding dropout cannot differ from
      the block dropout (the export uses `block_dropout_prob` for both and warns if they differ).
    * **Output-projection bias.** Stock ViT's attention output projection always has a bias. With the book's
      `use_bias=False` the export sets it to zero, but it is a trainable parameter there and will move in training.
      With `use_bias=True` it is the book's W_o bias.
    * **Pooling.** Stock ViT classifies the `<cls>` token only: `pooling="mean"` raises a `ValueError`.
    * **Stochastic depth** (`drop_path_rate`, not in the book) has no stock counterpart; it is identity in eval, so
      the export is exact for inference and silently without it in training (a warning is logged).
    * **Flip test-time augmentation** (`test_time_flip`, not in the book) has no stock counterpart: the export
      predicts from one view, as this model with `test_time_flip=False` (a warning is logged).
    * **Initialisation** (`init_style`, `position_embedding_std`) only matters for new models; stock ViT initialises
      with truncated normals of std `initializer_range`.
    """
    if not isinstance(model, (ViTD2LForImageClassification, ViTD2LModel)):
        raise TypeError(f"Expected a ViTD2LForImageClassification or ViTD2LModel, got {type(model).__name__}.")
    config = model.config
    if config.pooling != "cls":
        raise ValueError(
            "pooling='mean' cannot be exported: stock transformers ViT classifies the <cls> token only "
            "(ViTForImageClassification uses sequence_output[:, 0]). Export a pooling='cls' model."
        )
    if config.drop_path_rate > 0:
        logger.warning(
            "drop_path_rate=%s has no counterpart in stock ViT; the export is exact in eval mode but trains without "
            "stochastic depth.",
            config.drop_path_rate,
        )
    if config.test_time_flip and isinstance(model, ViTD2LForImageClassification):
        logger.warning(
            "test_time_flip=True (flip test-time augmentation) has no counterpart in stock ViT; the exported model "
            "predicts from one view, so its logits are this model's with model.config.test_time_flip = False."
        )
    with_head = isinstance(model, ViTD2LForImageClassification)
    hf_config = _stock_vit_config(config)
    hf_model = ViTForImageClassification(hf_config) if with_head else ViTModel(hf_config, add_pooling_layer=False)
    hf_state = hf_model.state_dict()
    base_prefix = "vit." if with_head else ""
    mapping = _hf_key_map(set(hf_state), base_prefix, config.num_hidden_layers, with_head)
    ours = model.state_dict()
    new_state = {}
    for our_key, value in ours.items():
        new_state[mapping[our_key]] = value.detach().clone()
    for i in range(config.num_hidden_layers):
        # The book's W_o has no bias with use_bias=False; stock ViT always has one: make it zero.
        our_bias = f"{'vit_d2l.' if with_head else ''}encoder.layer.{i}.attention.W_o.bias"
        hf_bias = mapping[our_bias]
        if our_bias not in ours:
            new_state[hf_bias] = torch.zeros_like(hf_state[hf_bias])
    missing = sorted(set(hf_state) - set(new_state))
    unexpected = sorted(set(new_state) - set(hf_state))
    if missing or unexpected:
        raise RuntimeError(f"Internal key mapping error: missing {missing}, unexpected {unexpected}.")
    hf_model.load_state_dict({k: v.to(hf_state[k].dtype) for k, v in new_state.items()}, strict=True)
    return hf_model.eval()


def from_transformers_vit(
    hf_model: ViTForImageClassification | ViTModel,
) -> ViTD2LForImageClassification | ViTD2LModel:
    """Import a stock transformers ViT (`ViTForImageClassification`, or `ViTModel` without its pooler).

    Requires square images and patches and `hidden_act="gelu"`. Stock ViT's attention output projection always has
    a bias; with `qkv_bias=False` and an all-zero output bias (an export of a book model) the result has the book's
    `use_bias=False`; with a non-zero one the result gets `qkv_bias=True` with zero W_q/W_k/W_v biases, which
    computes the same function (a warning is logged). A `ViTModel`'s pooler (dense + tanh) has no counterpart and is
    dropped. Embedding and block dropout both become `hidden_dropout_prob` (the attention dropout is
    `attention_probs_dropout_prob`, which we cannot set separately: `block_dropout_prob` takes
    `attention_probs_dropout_prob`).
    """
    if not isinstance(hf_model, (ViTForImageClassification, ViTModel)):
        raise TypeError(
            f"Expected a transformers ViTForImageClassification or ViTModel, got {type(hf_model).__name__}."
        )
    hf_config = hf_model.config

    def square(name):
        value = getattr(hf_config, name)
        if isinstance(value, (list, tuple)):
            if len(value) != 2 or value[0] != value[1]:
                raise ValueError(f"Only square {name} is supported, got {value!r}.")
            value = value[0]
        return int(value)

    if hf_config.hidden_act != "gelu":
        raise ValueError(f"hidden_act={hf_config.hidden_act!r} cannot be expressed: the book's ViT uses exact 'gelu'.")
    with_head = isinstance(hf_model, ViTForImageClassification)
    hf_state = hf_model.state_dict()
    base_prefix = "vit." if with_head else ""
    layers = hf_config.num_hidden_layers
    mapping = _hf_key_map(set(hf_state), base_prefix, layers, with_head)
    ours_prefix = "vit_d2l." if with_head else ""
    o_biases = [hf_state[mapping[f"{ours_prefix}encoder.layer.{i}.attention.W_o.bias"]] for i in range(layers)]
    qkv_bias = bool(hf_config.qkv_bias)
    zero_qkv = False
    if not qkv_bias and any(bool(b.abs().max() > 0) for b in o_biases):
        logger.warning(
            "The stock ViT has a non-zero attention output bias but no q/k/v biases: importing with qkv_bias=True "
            "and zero W_q/W_k/W_v biases (same function)."
        )
        qkv_bias, zero_qkv = True, True
    config = ViTD2LConfig(
        image_size=square("image_size"),
        patch_size=square("patch_size"),
        num_channels=hf_config.num_channels,
        hidden_size=hf_config.hidden_size,
        intermediate_size=hf_config.intermediate_size,
        num_attention_heads=hf_config.num_attention_heads,
        num_hidden_layers=layers,
        embedding_dropout_prob=hf_config.hidden_dropout_prob,
        block_dropout_prob=hf_config.attention_probs_dropout_prob,
        qkv_bias=qkv_bias,
        layer_norm_eps=hf_config.layer_norm_eps,
        initializer_range=hf_config.initializer_range,
        position_embedding_std=hf_config.initializer_range,
        init_style="hf",
        id2label=dict(hf_config.id2label),
        label2id=dict(hf_config.label2id),
    )
    model = ViTD2LForImageClassification(config) if with_head else ViTD2LModel(config)
    ours = model.state_dict()
    new_state = {}
    for our_key, target in ours.items():
        hf_key = mapping[our_key]
        if hf_key in hf_state:
            new_state[our_key] = hf_state[hf_key].detach().clone().to(target.dtype)
        elif zero_qkv and re.search(r"attention\.W_[qkv]\.bias$", our_key):
            new_state[our_key] = torch.zeros_like(target)
    model.load_state_dict(new_state, strict=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------------
# Files: what scripts/convert_d2l_checkpoint.py runs
# ---------------------------------------------------------------------------------------------------------------------


def load_d2l_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a `.pt`/`.pth` file saved with `torch.save(model.state_dict(), path)` (or a dict holding the state dict
    under `"state_dict"` or `"model"`, as training loops save it), with `torch.load(weights_only=True)`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Checkpoint not found: {path}. Pass the path of a .pt file saved with torch.save.")
    if os.path.isdir(path):
        raise CheckpointConversionError(f"{path} is a folder; pass the .pt file written by torch.save(state_dict).")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError ... depending on the damage
        first_line = re.sub(r"\x1b\[[0-9;]*m", "", (str(error).splitlines() or [""])[0])  # no terminal colours
        raise CheckpointConversionError(
            f"Could not read {path} with torch.load(weights_only=True): {type(error).__name__}: "
            f"{first_line}. The file must hold a state dict (tensors only) "
            "saved with torch.save(model.state_dict(), path); whole pickled modules are refused for safety."
        ) from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        kind = type(obj).__name__
        detail = f" with keys {sorted(map(str, obj))[:10]}" if isinstance(obj, Mapping) else ""
        raise CheckpointConversionError(
            f"{path} holds a {kind}{detail}, not a state dict of tensors. Save the book model with "
            "torch.save(model.state_dict(), path), or a dict with the state dict under 'state_dict' or 'model'."
        )
    return dict(obj)


def _atomic_folder_write(output_dir: str | os.PathLike, write: Callable[[str], None]) -> str:
    """Run `write(staging_dir)`, then move its files into `output_dir` with `os.replace` (config.json last)."""
    output_dir = os.path.abspath(os.fspath(output_dir))
    if os.path.isfile(output_dir):
        raise ValueError(f"The output must be a folder, but {output_dir} is a file.")
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.converting-", dir=parent)
    try:
        write(staging)
        os.makedirs(output_dir, exist_ok=True)
        for name in sorted(os.listdir(staging), key=lambda n: n == "config.json"):
            os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


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
    Returns the absolute output folder.
    """
    state_dict = load_d2l_checkpoint(checkpoint)
    model = from_d2l_state_dict(state_dict, config=dict(config_overrides or {}) or None)
    config = model.config
    size = {"height": config.image_size, "width": config.image_size}
    if to_transformers:
        exported = to_transformers_vit(model)
        processor = ViTImageProcessorPil(size=size, do_normalize=False)

        def write(folder):
            exported.save_pretrained(folder)
            processor.save_pretrained(folder)

        return _atomic_folder_write(output_dir, write)
    model.save_pretrained(output_dir)  # atomic itself
    if config.num_channels in (1, 3):
        ViTD2LImageProcessor(size=size, num_channels=config.num_channels).save_pretrained(output_dir)
    else:
        logger.warning("No image processor saved: it supports 1 or 3 channels, the model has %d.", config.num_channels)
    return os.path.abspath(os.fspath(output_dir))


__all__ = [
    "CheckpointConversionError",
    "convert_d2l_checkpoint",
    "d2l_key_map",
    "from_d2l_state_dict",
    "from_transformers_vit",
    "infer_d2l_config_kwargs",
    "load_d2l_checkpoint",
    "parse_config_overrides",
    "to_d2l_state_dict",
    "to_transformers_vit",
]
