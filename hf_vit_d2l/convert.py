"""Converters between the book's own `ViT` module, this package and transformers' stock `ViTForImageClassification`."""

from __future__ import annotations

import logging
import os
import pickle
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from huggingface_hub.errors import StrictDataclassError
from torch.nn.parameter import UninitializedParameter
from transformers import HfArgumentParser, ViTConfig, ViTForImageClassification, ViTImageProcessorPil, ViTModel

from .configuration_vit_d2l import ViTD2LConfig
from .image_processing_vit_d2l import ViTD2LImageProcessor
from .modeling_vit_d2l import ViTD2LForImageClassification, ViTD2LModel
from .presets import parse_config_overrides
from .utils import save_folder_atomically, unsafe_pickle_message

logger = logging.getLogger(__name__)


class CheckpointConversionError(ValueError):
    """A checkpoint that cannot be converted: wrong keys, wrong shapes, or not a state dict at all."""


# ------------------------------------------------------------------- The book's `ViT` <-> ViTD2LForImageClassification

# Our keys -> the book's, as (pattern, replacement) rules applied in turn. Inside a block both use the book's names
# (ln1, attention.W_q, mlp.dense1, ...), so `vit_d2l.encoder.layer.{i}.` -> `blks.{i}.` is the whole change there.
D2L_RULES = [
    (r"^vit_d2l\.embeddings\.cls_token", "cls_token"),
    (r"^vit_d2l\.embeddings\.position_embeddings", "pos_embedding"),
    (r"^vit_d2l\.embeddings\.patch_embeddings\.projection\.", "patch_embedding.conv."),
    (r"^vit_d2l\.encoder\.layer\.", "blks."),
    (r"^vit_d2l\.layernorm\.", "head.0."),
    (r"^classifier\.", "head.1."),
]


def _rename(key: str, rules: list[tuple[str, str]]) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def d2l_key_map(model: ViTD2LForImageClassification) -> dict[str, str]:
    """Book key -> our key for every parameter of `model` (the model's config decides which exist, e.g. biases)."""
    return {_rename(key, D2L_RULES): key for key in model.state_dict()}


def _state_dict_problem(obj) -> str | None:
    """Why `obj` is not a non-empty mapping of initialised tensors, or None."""
    if not isinstance(obj, Mapping):
        return f"it is a {type(obj).__name__}"
    if not obj:
        return "it is empty"
    for key, value in obj.items():
        if isinstance(value, UninitializedParameter):  # the book's lazy layers before their first forward pass
            return f"{key} is an uninitialised lazy parameter (run one forward pass before saving)"
        if not torch.is_tensor(value):
            return f"{key!r} is a {type(value).__name__}, not a tensor"
    return None


def _as_state_dict(state_dict, source: str = "The input") -> dict[str, torch.Tensor]:
    """The state dict itself, also when a training loop saved it under "state_dict", "model" or "model_state_dict",
    without the `module.`/`_orig_mod.` prefixes that DistributedDataParallel and torch.compile add to every key."""
    if isinstance(state_dict, Mapping):
        wrapped = (state_dict.get(key) for key in ("state_dict", "model", "model_state_dict"))
        state_dict = next((value for value in wrapped if isinstance(value, Mapping)), state_dict)
    if problem := _state_dict_problem(state_dict):
        raise CheckpointConversionError(
            f"{source} is not a state dict of tensors: {problem}. Save the book model with "
            "torch.save(model.state_dict(), path)."
        )
    while prefix := next((p for p in ("module.", "_orig_mod.") if all(k.startswith(p) for k in state_dict)), None):
        state_dict = {key[len(prefix) :]: value for key, value in state_dict.items()}
    return dict(state_dict)


def infer_d2l_config_kwargs(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """The `ViTD2LConfig` sizes a book `ViT` state dict implies (everything but the number of heads)."""
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


def from_d2l_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: ViTD2LConfig | Mapping | None = None
) -> ViTD2LForImageClassification:
    """Load a `state_dict()` of the book's `ViT` module (or a training loop's dict holding it) into our classifier.

    `config`: None reads every size from the shapes, with the config's defaults (the book's 8 heads) for the rest; a
    dict overrides them (`{"num_heads": 4}`, canonical or book names); a `ViTD2LConfig` must agree with the shapes.
    Raises `CheckpointConversionError` listing every missing or unexpected key and shape mismatch.
    """
    state_dict = _as_state_dict(state_dict)
    if not isinstance(config, ViTD2LConfig):
        # Book names (num_heads=4) become canonical ones, so that they replace the inferred values.
        overrides = {ViTD2LConfig.attribute_map.get(key, key): value for key, value in (config or {}).items()}
        try:
            config = ViTD2LConfig(**{**infer_d2l_config_kwargs(state_dict), **overrides})
        except (ValueError, TypeError, StrictDataclassError) as err:  # the strict config names the field and value
            message = f"Invalid config for this checkpoint: {err.__cause__ or err}"
            if "num_attention_heads" in message:  # the one size the weights do not fix
                message += (
                    " The number of heads cannot be read from the weights: pass config={'num_attention_heads': N}"
                    " (--num_heads N on the command line; default: the book's 8)."
                )
            raise CheckpointConversionError(message) from None
    model = ViTD2LForImageClassification(config)
    mapping, target = d2l_key_map(model), model.state_dict()
    problems = {
        "missing keys": sorted(set(mapping) - set(state_dict)),
        "unexpected keys": sorted(set(state_dict) - set(mapping)),
        "shape mismatches": [
            f"{key}: checkpoint {tuple(value.shape)}, config {tuple(target[mapping[key]].shape)}"
            for key, value in state_dict.items()
            if key in mapping and value.shape != target[mapping[key]].shape
        ],
    }
    if any(problems.values()):
        raise CheckpointConversionError(
            f"The state dict does not match the book's ViT with num_blks={config.num_hidden_layers}, "
            f"use_bias={config.qkv_bias} (check the config / overrides): "
            + "; ".join(f"{kind} ({len(keys)}): {', '.join(keys)}" for kind, keys in problems.items() if keys)
        )
    model.load_state_dict({mapping[key]: value for key, value in state_dict.items()}, strict=True)
    return model.eval()


def to_d2l_state_dict(model: ViTD2LForImageClassification) -> dict[str, torch.Tensor]:
    """The inverse of `from_d2l_state_dict`: a state dict that the book's `ViT` module loads with `strict=True`."""
    if model.config.pooling != "cls":
        raise ValueError("The book's ViT classifies the <cls> token; a pooling='mean' model has no book equivalent.")
    ours = model.state_dict()
    return {book_key: ours[our_key].detach().clone() for book_key, our_key in d2l_key_map(model).items()}


# ----------------------------------------------------------------------------------- ViTD2L -> transformers' stock ViT

# Our keys -> stock ViT's, as rules for `_rename`: transformers 5.4's layout, then the later 5.x one
# (`encoder.layer.{i}.attention.attention.query` became `layers.{i}.attention.q_proj`).
_STOCK_COMMON = [(r"^vit_d2l\.", "vit."), (r"\.ln1\.", ".layernorm_before."), (r"\.ln2\.", ".layernorm_after.")]
STOCK_VIT_LAYOUTS = [
    [
        *_STOCK_COMMON,
        (r"attention\.W_q\.", "attention.attention.query."),
        (r"attention\.W_k\.", "attention.attention.key."),
        (r"attention\.W_v\.", "attention.attention.value."),
        (r"attention\.W_o\.", "attention.output.dense."),
        (r"mlp\.dense1\.", "intermediate.dense."),
        (r"mlp\.dense2\.", "output.dense."),
    ],
    [
        *_STOCK_COMMON,
        (r"encoder\.layer\.", "layers."),
        (r"attention\.W_(.)\.", r"attention.\1_proj."),
        (r"mlp\.dense(.)\.", r"mlp.fc\1."),
    ],
]
# Stock ViT's attention output bias, which our model has only with use_bias=True.
STOCK_O_BIAS = r"attention\.(o_proj|output\.dense)\.bias$"

# Fields that mean the same in ViTConfig and ViTD2LConfig, under the same names.
SHARED_CONFIG_FIELDS = (
    "image_size",
    "patch_size",
    "num_channels",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_hidden_layers",
    "qkv_bias",
    "layer_norm_eps",
    "initializer_range",
    "id2label",
    "label2id",
)


def to_transformers_vit(model: ViTD2LForImageClassification | ViTD2LModel) -> ViTForImageClassification | ViTModel:
    """Export to transformers' stock `ViTForImageClassification` (or `ViTModel` for a `ViTD2LModel`), which loads
    without remote code and gives our logits in eval mode. It does not train as the book's model (dropout placement,
    a trainable W_o bias, no stochastic depth): see docs/differences.md#from-stock-transformers-vit."""
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
    # The installed transformers' layout is the one whose keys cover ours, leaving only W_o biases over.
    for rules in STOCK_VIT_LAYOUTS:
        new_state = {_rename(key, rules): value for key, value in model.state_dict().items()}
        left_over = stock_state.keys() - new_state.keys()
        if new_state.keys() <= stock_state.keys() and all(re.search(STOCK_O_BIAS, key) for key in left_over):
            break
    else:
        raise RuntimeError(
            "This transformers version lays out ViT's weights in a way hf_vit_d2l does not know "
            f"(keys such as {sorted(stock_state)[:8]}); please report it with `transformers.__version__`."
        )
    # The book's W_o has no bias with use_bias=False; stock ViT always has one: make it zero.
    new_state.update({key: torch.zeros_like(stock_state[key]) for key in left_over})
    stock.load_state_dict(new_state, strict=True)
    return stock.eval()


# ------------------------------------------------------------------ Files: what scripts/convert_d2l_checkpoint.py runs


def load_d2l_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a `.pt`/`.pth` file saved with `torch.save(model.state_dict(), path)` (or a training loop's dict holding
    it, see `from_d2l_state_dict`) with `torch.load(weights_only=True)`: pickled modules and other code are refused."""
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "not found"
        raise FileNotFoundError(f"Checkpoint {what}: {path}. Pass the .pt file written by torch.save(state_dict).")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # more than tensors (code that loading would run), or damaged
        advice = " The book's model converts from its state dict: torch.save(model.state_dict(), path)."
        raise CheckpointConversionError(unsafe_pickle_message(path) + advice) from None
    except Exception as error:  # RuntimeError, EOFError ... depending on the damage
        first_line = re.sub(r"\x1b\[[0-9;]*m", "", (str(error).splitlines() or [""])[0])  # no terminal colours
        raise CheckpointConversionError(
            f"Could not read {path} with torch.load(weights_only=True): {type(error).__name__}: {first_line}. The "
            "file must hold a state dict (tensors only) saved with torch.save(model.state_dict(), path)."
        ) from None
    return _as_state_dict(obj, source=path)


def convert_d2l_checkpoint(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    config_overrides: Mapping | None = None,
    to_transformers: bool = False,
) -> str:
    """Convert a book `ViT` `.pt` state dict into a `save_pretrained` folder (model + image processor): ours with its
    code files, or with `to_transformers=True` stock transformers ViT. Returns the absolute output folder."""
    model = from_d2l_state_dict(load_d2l_checkpoint(checkpoint), config=config_overrides)
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


@dataclass
class ConvertArguments:
    checkpoint: str = field(metadata={"help": "Path of the book model's state dict (.pt/.pth, saved by torch.save)."})
    output_dir: str = field(metadata={"help": "Folder to write the converted model and image processor into."})
    num_heads: int | None = field(
        default=None,
        metadata={"help": "Attention heads (cannot be read from the weights; default: the book's 8)."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated key=value config settings, book or HF names: 'num_heads=4,emb_dropout=0.2'."
        },
    )
    to_transformers: bool = field(
        default=False,
        metadata={"help": "Write stock transformers ViTForImageClassification (loads without remote code)."},
    )

    def __post_init__(self):
        self.overrides = parse_config_overrides(self.config_overrides)
        if self.num_heads is not None:
            if {"num_heads", "num_attention_heads"} & set(self.overrides):
                raise ValueError("Give the number of heads once: --num_heads or --config_overrides, not both.")
            self.overrides["num_attention_heads"] = self.num_heads


def main(argv: list[str] | None = None) -> int:
    try:
        (args,) = HfArgumentParser(ConvertArguments).parse_args_into_dataclasses(args=argv)
        folder = convert_d2l_checkpoint(
            args.checkpoint, args.output_dir, config_overrides=args.overrides, to_transformers=args.to_transformers
        )
    except (FileNotFoundError, ValueError) as error:  # CheckpointConversionError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    kind = "stock transformers ViTForImageClassification" if args.to_transformers else "ViTD2LForImageClassification"
    print(f"Wrote {kind} to {folder}")
    return 0


__all__ = [
    "main",
    "ConvertArguments",
    "CheckpointConversionError",
    "convert_d2l_checkpoint",
    "from_d2l_state_dict",
    "load_d2l_checkpoint",
    "to_d2l_state_dict",
    "to_transformers_vit",
]


if __name__ == "__main__":
    sys.exit(main())
