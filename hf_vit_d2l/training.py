"""Training of the book's ViT through the Hugging Face `Trainer` (the library side of `scripts/train.py`).

`main()` parses `ModelArguments`, `DataArguments`, `RecipeArguments` and `TrainingArguments`, fills in the chosen
recipe's defaults for every flag the user did not give, builds the data, the model and the image processor, trains
with evaluation every epoch and leaves a folder that loads with `trust_remote_code=True` (see the README).

Recipes (`--recipe`):

* ``book`` (default): the book's `d2l.Trainer` loop for its ViT: plain SGD, lr 0.1, no momentum, no weight decay,
  constant learning rate, global batch 128, 10 epochs, no gradient clipping, the book's 96 px config, no
  augmentation, no normalisation, evaluation on the test split after every epoch.
* ``improved``: same model (book config, position embeddings initialised with std 0.02), better training: AdamW
  (lr 1e-3, weight decay 0.05), linear warm-up then cosine decay, label smoothing 0.1, random crop + flip
  augmentation, Fashion-MNIST normalisation, stochastic depth 0.1.
* ``quick``: a small config at 28 px for a laptop CPU (patch 7, hidden 128, 4 blocks, mean pooling, drop path 0.1,
  flip test-time augmentation in eval; AdamW lr 1e-3, warm-up + cosine, label smoothing 0.1, horizontal flips,
  13 epochs on preloaded images, under 10 minutes on two cores), chosen on a validation split (`hf_vit_d2l.sweep`
  and `scripts/train.py --validation_size 5000`; README "Accuracy").

Speed switches (any recipe; see `hf_vit_d2l.fast`):

* ``--fast_path``: cheaper dropout masks (16 random bits per element: the drop probability is rounded to a multiple
  of 1/65536, 0.1 -> 0.100006, a deviation from the book's `nn.Dropout`, and the masks differ from nn.Dropout's for
  the same seed) and the patch convolution as reshape + matmul. Same weight keys, same eval logits. Off by default
  in fp32, so ``--recipe book`` keeps the book's exact dropout; on by default for bf16 training on a CPU (``--bf16``
  or ``--bf16_master_weights``, without ``--attn_implementation``), where it measured 1.5x faster than ``--bf16``
  alone; ``--fast_path false`` turns it off.
* ``--bf16_master_weights``: bf16 weights (no per-step autocast casts) with fp32 master weights inside the optimizer
  (`Bf16MasterWeightOptimizer` around the optimizer the Trainer would build: SGD for ``book``, AdamW otherwise).
  Checkpoints and the final model hold the fp32 masters; resuming restores the masters exactly. Not with
  ``--fp16``, DeepSpeed or FSDP.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shlex
import shutil
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
import transformers
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from . import presets
from .configuration_vit_d2l import ViTD2LConfig
from .image_processing_vit_d2l import ViTD2LImageProcessor
from .modeling_vit_d2l import ViTD2LForImageClassification
from .presets import PRESETS

logger = logging.getLogger("hf_vit_d2l.training")

# Fashion-MNIST's pixel statistics on [0, 1] (train split), used by the recipes that normalise.
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

# Folder (inside output_dir) where a checkpoint is written before it is renamed to `checkpoint-N`. Its name does
# not match transformers' `^checkpoint-(\d+)$`, so nothing ever resumes from a half-written checkpoint.
CHECKPOINT_STAGING_DIR = ".checkpoint-staging"


class TrainingSetupError(ValueError):
    """Bad arguments or inputs found before any training time is spent; the message says what to change."""


# ---------------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ModelArguments:
    """What to train: a fresh model from a preset/config (default: the book's), or a saved folder / Hub id."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Start from these weights (a folder saved by save_pretrained or a Hub id). Default: none "},
    )
    config_name: str | None = field(
        default=None,
        metadata={"help": "A config (folder, config.json or Hub id) for a fresh model, instead of --preset."},
    )
    preset: str | None = field(
        default=None,
        metadata={"help": f"Named model preset, one of {sorted(PRESETS)}. Default: the recipe's."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated config changes applied last, e.g. 'hidden_size=64,num_hidden_layers=1' "
            "(canonical or book names)."
        },
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention kernel: 'eager' (the book's math) or 'sdpa'."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow running model code downloaded with --model_name_or_path/--config_name from the Hub."},
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache Hub downloads."})


@dataclass
class DataArguments:
    """Where the images come from. Default: Fashion-MNIST from the Hub, or local IDX files when offline."""

    data_source: str = field(
        default="auto",
        metadata={
            "help": "Fashion-MNIST source: 'auto' (Hub when reachable, else local IDX files), 'hub' or 'local'."
        },
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder with the four Fashion-MNIST IDX files (.gz or not). Default: /usr/share/datasets/"
            "fashion-mnist when present."
        },
    )
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Another dataset with image and label columns: a Hub id or a local dataset folder/file."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's config (subset) name."})
    train_dir: str | None = field(default=None, metadata={"help": "An image folder (one sub-folder per class)."})
    validation_dir: str | None = field(default=None, metadata={"help": "An image folder for evaluation."})
    image_column_name: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the class labels."})
    auto_install_data: bool = field(
        default=True,
        metadata={
            "help": "Offline, without local files: install Debian's dataset-fashion-mnist when running as root "
            "(otherwise the error prints the command)."
        },
    )
    augmentation: str | None = field(
        default=None,
        metadata={
            "help": "Training augmentation: 'none' (the book) or 'improved' (random crop with padding, flip, random "
            "erasing). Default: the recipe's."
        },
    )
    crop_padding: int | None = field(
        default=None,
        metadata={
            "help": "Random-crop padding in pixels under --augmentation improved (0: no crop). Default: the recipe's "
            "(improved: 4/28 of the image height, quick: 0)."
        },
    )
    preprocessing_backend: str | None = field(
        default=None,
        metadata={
            "help": "Training-batch preprocessing: 'pil' (the image processor, as at inference) or 'tensor' "
            "(batched torch resize, within 1/255 of 'pil', faster). Default: the recipe's. Evaluation uses 'pil', "
            "or 'tensor' with --preload_images when no resize is needed (the same numbers, bit for bit)."
        },
    )
    preload_images: bool | None = field(
        default=None,
        metadata={
            "help": "Decode all images once into one uint8 array in memory instead of decoding every PNG each epoch "
            "(hf_vit_d2l.data.PreloadedImageDataset; the same pixel values). Needs images of one size and mode. "
            "Default: the recipe's (quick: true, book and improved: false)."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on a random subset of this many images (seeded), for quick runs."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on a random subset of this many images (seeded)."}
    )
    validation_size: float | None = field(
        default=None,
        metadata={
            "help": "Hold out this many training images (or this fraction, if < 1) as the evaluation set, stratified "
            "and seeded (hf_vit_d2l.data.train_validation_split, seed 42), and train on the rest: for choosing "
            "hyper-parameters without looking at the test split. Default: train on all of train, evaluate on test."
        },
    )


@dataclass
class RecipeArguments:
    """The training recipe and run-level switches that `TrainingArguments` no longer has."""

    recipe: str = field(
        default="book",
        metadata={"help": "Training recipe: 'book' (the d2l loop), 'improved' or 'quick'. Flags you give win."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Train from scratch in a non-empty --output_dir (its old checkpoint-* folders are removed) "
            "instead of resuming from its last checkpoint."
        },
    )
    fast_path: bool = field(
        default=False,
        metadata={
            "help": "Faster CPU training (hf_vit_d2l.fast.apply_fast_path): dropout masks from 16 random bits per "
            "element (the drop probability is rounded to a multiple of 1/65536, 0.1 -> 0.100006: a deviation from "
            "the book's nn.Dropout) and the patch convolution run as reshape + matmul. Same weights, same eval "
            "logits. Default: off in fp32 (the book's exact dropout); on for --bf16 or --bf16_master_weights on a "
            "CPU unless --attn_implementation is given (measured 1.5x faster than --bf16 alone)."
        },
    )
    bf16_master_weights: bool = field(
        default=False,
        metadata={
            "help": "Train with bf16 weights (no autocast casts) and fp32 master weights inside the optimizer "
            "(hf_vit_d2l.fast.Bf16MasterWeightOptimizer wrapping the recipe's SGD/AdamW). Checkpoints and the "
            "final model are saved in fp32 (the masters); resuming is exact. Not with --fp16, DeepSpeed or FSDP. "
            "The fastest CPU path: 2.5x fp32 with the fast path (book config, 2 cores)."
        },
    )


@dataclass(frozen=True)
class Recipe:
    """A training recipe: `TrainingArguments` defaults, the global batch, the model config and the data pipeline."""

    name: str
    description: str
    training: dict[str, Any]
    global_batch_size: int
    preset: str = "vit_d2l_fashion_mnist"
    config: dict[str, Any] = field(default_factory=dict)
    augment: bool = False
    crop_padding: int | None = None  # None: 4/28 of the image height (the collator's default)
    erasing_prob: float = 0.25
    normalize: bool = False
    backend: str = "pil"
    preload_images: bool = False


_COMMON = {
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "logging_strategy": "epoch",
    "per_device_eval_batch_size": 256,
    "seed": 42,
    "data_seed": 42,
    "save_total_limit": 2,
    "dataloader_drop_last": False,
    "ddp_find_unused_parameters": False,  # every parameter takes part in every forward pass
}

RECIPES: dict[str, Recipe] = {
    "book": Recipe(
        name="book",
        description="the book's d2l.Trainer loop: SGD lr 0.1, constant LR, batch 128, 10 epochs, no clipping",
        training=dict(
            _COMMON,
            optim="sgd",
            learning_rate=0.1,
            weight_decay=0.0,
            lr_scheduler_type="constant",
            warmup_steps=0,
            num_train_epochs=10,
            max_grad_norm=0.0,
            label_smoothing_factor=0.0,
        ),
        global_batch_size=128,
    ),
    "improved": Recipe(
        name="improved",
        description="book model, AdamW + warm-up/cosine, label smoothing, crop/flip, normalisation, drop path",
        training=dict(
            _COMMON,
            optim="adamw_torch",
            learning_rate=1e-3,
            weight_decay=0.05,
            adam_beta2=0.999,
            lr_scheduler_type="cosine",
            warmup_steps=0.05,  # a float < 1 is a fraction of all steps in transformers 5
            num_train_epochs=100,
            max_grad_norm=1.0,
            label_smoothing_factor=0.1,
        ),
        global_batch_size=128,
        config={"position_embedding_std": 0.02, "drop_path_rate": 0.1},
        augment=True,
        normalize=True,
    ),
    "quick": Recipe(
        name="quick",
        description="small 28 px model for a 2-core CPU: patch 7, width 128, AdamW + warm-up/cosine, flips, flip TTA",
        # Chosen on the 5,000-image validation split (--validation_size 5000) with scripts/sweep.py; the trials are
        # in README "Accuracy": patch 7 beat patch 4 per second of training, lr 1e-3 beat 3e-3, random crops cost
        # accuracy within this budget, drop path 0.1 beat 0 and 0.2, 6 blocks were not better than 4.
        training=dict(
            _COMMON,
            optim="adamw_torch",
            learning_rate=1e-3,
            weight_decay=0.05,
            lr_scheduler_type="cosine",
            warmup_steps=0.05,  # a float < 1 is a fraction of all steps in transformers 5
            # 13 epochs: 14 took 569.5 s with preloaded images, and flip test-time augmentation doubles the cost of
            # the per-epoch evaluation (README "Accuracy").
            num_train_epochs=13,
            max_grad_norm=1.0,
            label_smoothing_factor=0.1,
        ),
        global_batch_size=128,
        preset="vit_d2l_fashion_mnist_quick",
        augment=True,
        crop_padding=0,  # horizontal flips only: no random crop, no random erasing
        erasing_prob=0.0,
        normalize=True,
        backend="tensor",
        preload_images=True,
    ),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise TrainingSetupError(f"Unknown recipe {name!r}: use --recipe with one of {sorted(RECIPES)}.")
    return RECIPES[name]


def _flag_names(argv: list[str]) -> set[str]:
    """Destination names of the `--flags` in argv (`--foo-bar`, `--foo_bar=1`, `--no_foo` -> foo_bar, foo)."""
    names = set()
    for token in argv:
        if not token.startswith("--") or token == "--":
            continue
        name = token[2:].split("=", 1)[0].replace("-", "_")
        names.add(name)
        if name.startswith("no_"):
            names.add(name[3:])
    return names


def _to_cli(value: Any) -> list[str]:
    if isinstance(value, bool):
        return [str(value).lower()]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def parse_args(
    argv: list[str] | None = None,
) -> tuple[ModelArguments, DataArguments, RecipeArguments, TrainingArguments, Recipe, set[str]]:
    """Parse the command line (or one JSON file) with the recipe's defaults for every flag not given explicitly.

    Returns the four argument dataclasses, the `Recipe`, and the set of explicitly given flag names.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((ModelArguments, DataArguments, RecipeArguments, TrainingArguments))
    if len(argv) == 1 and argv[0].endswith(".json"):
        with open(argv[0]) as f:
            given = json.load(f)
        explicit = set(given)
        recipe = get_recipe(given.get("recipe", "book"))
        merged = {**{k: v for k, v in recipe.training.items() if k not in explicit}, **given}
        model_args, data_args, recipe_args, training_args = parser.parse_dict(merged)
        return model_args, data_args, recipe_args, training_args, recipe, explicit

    explicit = _flag_names(argv)
    recipe_name = "book"
    for i, token in enumerate(argv):
        if token.startswith("--recipe="):
            recipe_name = token.split("=", 1)[1]
        elif token == "--recipe" and i + 1 < len(argv):
            recipe_name = argv[i + 1]
    recipe = get_recipe(recipe_name)
    defaults = []
    for key, value in recipe.training.items():
        if key not in explicit:
            defaults += [f"--{key}", *_to_cli(value)]
    if explicit & {"bf16", "fp16"} and "use_cpu" not in explicit and not _has_accelerator():
        # TrainingArguments refuses bf16 without a GPU unless use_cpu is set; plain PyTorch autocasts on a CPU.
        precision = "bf16" if "bf16" in explicit else "fp16"
        logger.info("No GPU found: training on the CPU (--use_cpu true) with %s.", precision)
        defaults += ["--use_cpu", "true"]
    try:
        model_args, data_args, recipe_args, training_args = parser.parse_args_into_dataclasses(
            args=defaults + argv, look_for_args_file=False
        )
    except ValueError as err:  # TrainingArguments' own checks (__post_init__)
        raise TrainingSetupError(f"Invalid training arguments: {err}") from None
    return model_args, data_args, recipe_args, training_args, recipe, explicit


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def apply_batch_policy(training_args: TrainingArguments, recipe: Recipe, explicit: set[str]) -> int:
    """Keep the recipe's global batch under N processes; return the global batch actually used.

    Unless `--per_device_train_batch_size` is given, the per-device batch is the recipe's global batch (128)
    divided by the number of data-parallel replicas (processes x GPUs per process under DataParallel) and by the
    gradient accumulation steps, rounded up when it does not divide. An explicit per-device batch is kept as is,
    and then the global batch is per_device x replicas x accumulation.
    """
    replicas = training_args.world_size
    if training_args.parallel_mode.value == "not_distributed":
        replicas *= max(1, training_args.n_gpu)
    accumulation = training_args.gradient_accumulation_steps
    if "per_device_train_batch_size" not in explicit:
        per_device = math.ceil(recipe.global_batch_size / (replicas * accumulation))
        if per_device * replicas * accumulation != recipe.global_batch_size:
            logger.warning(
                "The %s recipe's global batch %d does not divide over %d replicas x %d accumulation steps; using "
                "%d per device (global %d).",
                recipe.name,
                recipe.global_batch_size,
                replicas,
                accumulation,
                per_device,
                per_device * replicas * accumulation,
            )
        training_args.per_device_train_batch_size = per_device
    return training_args.per_device_train_batch_size * replicas * accumulation


# ---------------------------------------------------------------------------------------------------------------
# Output folder, checkpoints, Hub
# ---------------------------------------------------------------------------------------------------------------


def _is_complete_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "trainer_state.json")) and os.path.isfile(
        os.path.join(path, "config.json")
    )


def get_last_checkpoint(output_dir: str) -> str | None:
    """The newest complete `checkpoint-N` folder in output_dir, or None.

    Checkpoints written by `ViTD2LTrainer` appear only when complete (staged, then renamed); the completeness check
    also skips folders left half-written by other tools (a warning names them).
    """
    if not os.path.isdir(output_dir):
        return None
    candidates = []
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        prefix = f"{PREFIX_CHECKPOINT_DIR}-"
        if name.startswith(prefix) and name[len(prefix) :].isdigit() and os.path.isdir(path):
            candidates.append((int(name[len(prefix) :]), path))
    for _, path in sorted(candidates, reverse=True):
        if _is_complete_checkpoint(path):
            return path
        logger.warning("Skipping incomplete checkpoint %s (no trainer_state.json or config.json).", path)
    return None


def resolve_output_dir(training_args: TrainingArguments, recipe_args: RecipeArguments) -> str | None:
    """Checks the output folder; returns the checkpoint to resume from (explicit, auto-detected or None).

    As transformers' example scripts: a folder holding checkpoints is resumed from its newest complete one; a
    non-empty folder without checkpoints is refused unless `--overwrite_output_dir`.
    """
    output_dir = training_args.output_dir
    resume = training_args.resume_from_checkpoint
    if resume is not None:
        if resume.lower() in ("true", "1", "yes"):
            last = get_last_checkpoint(output_dir)
            if last is None:
                raise TrainingSetupError(
                    f"--resume_from_checkpoint true, but {output_dir} holds no complete checkpoint-* folder."
                )
            return last
        if not os.path.isdir(resume) or not _is_complete_checkpoint(resume):
            raise TrainingSetupError(
                f"--resume_from_checkpoint {resume}: not a complete checkpoint folder (needs config.json and "
                "trainer_state.json). Pass a checkpoint-N folder written by this script, or drop the flag."
            )
        return resume
    if not os.path.isdir(output_dir):
        if os.path.exists(output_dir):
            raise TrainingSetupError(f"--output_dir {output_dir} is a file; pass a folder.")
        return None
    if recipe_args.overwrite_output_dir:
        return None
    last = get_last_checkpoint(output_dir)
    if last is not None:
        logger.info("Resuming from %s (found in --output_dir; pass --overwrite_output_dir to start afresh).", last)
        return last
    ignorable = {CHECKPOINT_STAGING_DIR, "runs", "run_info.json"}
    leftovers = [name for name in os.listdir(output_dir) if name not in ignorable]
    if leftovers:
        raise TrainingSetupError(
            f"--output_dir {output_dir} is not empty ({', '.join(sorted(leftovers)[:5])}"
            f"{', ...' if len(leftovers) > 5 else ''}) and holds no checkpoint to resume from. Pass "
            "--overwrite_output_dir to train from scratch in it, or choose another --output_dir."
        )
    return None


def clear_stale_checkpoints(output_dir: str) -> None:
    """Under --overwrite_output_dir: remove old checkpoint-* folders so that a later auto-resume cannot pick one."""
    if not os.path.isdir(output_dir):
        return
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        if (name.startswith(f"{PREFIX_CHECKPOINT_DIR}-") or name == CHECKPOINT_STAGING_DIR) and os.path.isdir(path):
            logger.warning("--overwrite_output_dir: removing old %s", path)
            shutil.rmtree(path)


def check_hub_access(training_args: TrainingArguments, timeout: float = 5.0) -> None:
    """With --push_to_hub, fail now (before data and training) when the Hub is unreachable or no token is set."""
    if not training_args.push_to_hub:
        return
    from huggingface_hub import HfApi, constants

    hint = (
        "Drop --push_to_hub to train offline; push the finished folder later with "
        f"`hf upload <user>/<repo> {training_args.output_dir}`."
    )
    if constants.HF_HUB_OFFLINE:
        raise TrainingSetupError(f"--push_to_hub needs the Hugging Face Hub, but HF_HUB_OFFLINE is set. {hint}")
    endpoint = urlparse(constants.ENDPOINT)
    host, port = endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise TrainingSetupError(
            f"--push_to_hub needs the Hugging Face Hub, but {constants.ENDPOINT} cannot be reached ({err}). {hint}"
        ) from None
    try:
        HfApi().whoami(token=training_args.hub_token)
    except Exception as err:  # no token, invalid token, or a network error after the connect
        raise TrainingSetupError(
            f"--push_to_hub: the Hub did not accept the token ({type(err).__name__}: {err}). Log in with "
            f"`hf auth login` or set HF_TOKEN (or pass --hub_token). {hint}"
        ) from None


class ViTD2LTrainer(Trainer):
    """`Trainer` whose checkpoints appear atomically.

    transformers 5.24's `Trainer._save_checkpoint` writes model, optimizer, scheduler, RNG state and trainer state
    one file after the other straight into `checkpoint-N`; a process killed in between leaves a folder that
    `get_last_checkpoint` picks and `train(resume_from_checkpoint=...)` fails on. Here the whole checkpoint is
    written into `output_dir/.checkpoint-staging/checkpoint-N` by every rank, then (after a barrier) renamed to
    `output_dir/checkpoint-N` in one `os.rename` by the saving process.
    """

    _staging = False

    def create_model_card(self, *args, **kwargs) -> None:
        """Write this project's card (`hf_vit_d2l.model_card`, every figure from the run's own files) as README.md.

        The Trainer's own card says "fine-tuned version of [](...)" for a model trained from scratch and has no
        `pipeline_tag`; `--push_to_hub` uploads this one instead. Before the run's files exist (an intermediate
        push) the Trainer's card is written.
        """
        if not self.is_world_process_zero():
            return
        from .model_card import RunFolderError, build_model_card

        try:
            card = build_model_card(self.args.output_dir, repo_id=self.args.hub_model_id)
        except (RunFolderError, OSError, ValueError) as err:
            logger.warning("Model card from the run's files not possible yet (%s); using the Trainer's card.", err)
            return super().create_model_card(*args, **kwargs)
        path = os.path.join(self.args.output_dir, "README.md")
        card.save(path + ".tmp")
        os.replace(path + ".tmp", path)

    def __init__(self, *args, eval_data_collator=None, bf16_master_weights: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        # Evaluation batches skip the training augmentation: the Trainer has one collator, so swap it while the
        # evaluation dataloader is built (the DataLoader keeps the collator it was built with).
        self.eval_data_collator = eval_data_collator
        self.bf16_master_weights = bf16_master_weights
        self.master_weight_optimizer = None  # the Bf16MasterWeightOptimizer, once create_optimizer has built it
        if bf16_master_weights:
            if self.args.fp16:
                raise TrainingSetupError("--bf16_master_weights trains in bf16; drop --fp16.")
            if self.is_deepspeed_enabled or self.is_fsdp_enabled:
                raise TrainingSetupError(
                    "--bf16_master_weights is not supported with DeepSpeed or FSDP (they keep their own master "
                    "weights); use their bf16 settings instead."
                )

    # -------------------------------------------------------------------------------- bf16 with fp32 master weights
    def create_optimizer(self, model=None):
        """The Trainer's optimizer; under `bf16_master_weights` the same optimizer over fp32 masters of bf16 weights.

        transformers 5.24's `Trainer.create_optimizer` builds `optimizer_cls(groups, **kwargs)` with two groups
        (weight decay / none, from `get_decay_parameter_names`) and `(optimizer_cls, kwargs)` from
        `get_optimizer_cls_and_kwargs(args)` (SGD for the book recipe, AdamW for the others). Here the same class,
        kwargs and groups are built over fp32 copies of the parameters, the model is cast to bf16, and the result is
        wrapped in `Bf16MasterWeightOptimizer`. It runs before `accelerator.prepare` (and after a checkpoint's
        weights were loaded), so the masters start from the exact fp32 weights and the optimizer state loaded on
        resume (which carries the masters) overwrites them exactly.
        """
        if not self.bf16_master_weights or self.optimizer is not None:
            return super().create_optimizer(model)
        from .fast import to_bf16_with_master_weights

        opt_model = self.model if model is None else model
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
        else:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs = dict(optimizer_kwargs)
        if (
            not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer))
            or {"params", "model", "optimizer_dict"} & set(optimizer_kwargs)
            or "bitsandbytes" in str(optimizer_cls)
        ):
            raise TrainingSetupError(
                f"--bf16_master_weights supports plain torch optimizers (e.g. --optim sgd, adamw_torch), not "
                f"--optim {self.args.optim}."
            )
        decay = set(self.get_decay_parameter_names(opt_model))
        named = [(n, p) for n, p in opt_model.named_parameters() if p.requires_grad]
        groups = [
            ([p for n, p in named if n in decay], self.args.weight_decay),
            ([p for n, p in named if n not in decay], 0.0),
        ]

        def factory(masters: list) -> torch.optim.Optimizer:
            # `to_bf16_with_master_weights` makes the masters in `model.parameters()` order (trainable only).
            master_of = {id(p): m for p, m in zip([p for _, p in named], masters)}
            return optimizer_cls(
                [{"params": [master_of[id(p)] for p in ps], "weight_decay": wd} for ps, wd in groups],
                **optimizer_kwargs,
            )

        if [p for _, p in named] != [p for p in opt_model.parameters() if p.requires_grad]:
            raise RuntimeError("named_parameters() and parameters() disagree; cannot pair master weights.")
        self.master_weight_optimizer = to_bf16_with_master_weights(opt_model, factory)
        self.optimizer = self.master_weight_optimizer
        logger.info("bf16 weights with fp32 master weights: %r", self.master_weight_optimizer)
        return self.optimizer

    def _prepare_inputs(self, inputs):
        inputs = super()._prepare_inputs(inputs)
        # Under bf16 weights the (float32) pixels are cast to the model's dtype (nothing to do in fp32).
        dtype = self.model.dtype
        pixels = inputs.get("pixel_values") if isinstance(inputs, dict) else None
        if pixels is not None and pixels.is_floating_point() and pixels.dtype != dtype:
            inputs["pixel_values"] = pixels.to(dtype)
        return inputs

    def _save(self, output_dir=None, state_dict=None):
        """Save in fp32: while training in bf16 the fp32 masters are saved (exact), not the bf16 weights."""
        optimizer = self.master_weight_optimizer
        if optimizer is None or state_dict is not None or self.model.dtype == torch.float32:
            return super()._save(output_dir, state_dict=state_dict)
        master_of = {id(p): m for p, m in zip(optimizer.model_params, optimizer.master_params)}
        swapped = []
        with torch.no_grad():
            for param in self.model.parameters():
                if param.is_floating_point() and param.dtype != torch.float32:
                    swapped.append((param, param.data))
                    master = master_of.get(id(param))
                    param.data = master.data if master is not None else param.data.float()
        try:
            return super()._save(output_dir, state_dict=state_dict)
        finally:
            for param, data in swapped:
                param.data = data

    def restore_fp32(self) -> None:
        """End of bf16 training: the model becomes fp32 with the master weights (before the final save/eval)."""
        if self.master_weight_optimizer is not None and self.model.dtype != torch.float32:
            from .fast import restore_fp32

            restore_fp32(self.model, self.master_weight_optimizer)

    def get_eval_dataloader(self, eval_dataset=None):
        if self.eval_data_collator is None:
            return super().get_eval_dataloader(eval_dataset)
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

    def get_test_dataloader(self, test_dataset):
        if self.eval_data_collator is None:
            return super().get_test_dataloader(test_dataset)
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super().get_test_dataloader(test_dataset)
        finally:
            self.data_collator = train_collator

    def _get_output_dir(self, trial):
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, CHECKPOINT_STAGING_DIR) if self._staging else run_dir

    def _save_checkpoint(self, model, trial):
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staged = os.path.join(run_dir, CHECKPOINT_STAGING_DIR, name)
        final = os.path.join(run_dir, name)
        if self.args.should_save and os.path.isdir(staged):
            shutil.rmtree(staged)  # left by a killed run
        self.accelerator.wait_for_everyone()
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            _fsync_tree(staged)
            if os.path.isdir(final):  # a re-save at the same step: swap, never a moment without a checkpoint
                old = os.path.join(run_dir, CHECKPOINT_STAGING_DIR, f"{name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.rename(final, old)
                os.rename(staged, final)
                shutil.rmtree(old)
            else:
                os.rename(staged, final)
            if self.state.best_model_checkpoint and self.state.best_model_checkpoint.startswith(
                os.path.join(run_dir, CHECKPOINT_STAGING_DIR)
            ):
                self.state.best_model_checkpoint = os.path.join(
                    run_dir, os.path.basename(self.state.best_model_checkpoint)
                )
            shutil.rmtree(os.path.join(run_dir, CHECKPOINT_STAGING_DIR), ignore_errors=True)
            # The Trainer rotated checkpoints inside the staging folder (only the new one there): rotate here.
            from transformers.trainer_utils import rotate_checkpoints

            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,
            )
        self.accelerator.wait_for_everyone()


def _fsync_tree(path: str) -> None:
    """Flush a folder's files to disk before it is renamed into place (protects against power loss too)."""
    for root, _, files in os.walk(path):
        for name in files:
            try:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.remove(staging)


# ---------------------------------------------------------------------------------------------------------------
# Metrics, callbacks
# ---------------------------------------------------------------------------------------------------------------

LOCAL_ACCURACY_METRIC = str(Path(__file__).with_name("accuracy_metric.py"))


def hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_accuracy_metric():
    """`evaluate`'s accuracy: the Hub module when the Hub is reachable, else the copy shipped in this package.

    The Hub is probed with a 3 s connect first, so an offline machine does not wait for evaluate's network time-out.
    """
    import evaluate

    if hub_reachable():
        try:
            return evaluate.load("accuracy", keep_in_memory=True)
        except Exception as err:  # Hub reachable but the module not served: use the local copy
            logger.info("evaluate.load('accuracy') failed (%s); using %s", err, LOCAL_ACCURACY_METRIC)
    else:
        logger.info("Hub not reachable: loading the accuracy metric from %s", LOCAL_ACCURACY_METRIC)
    return evaluate.load(LOCAL_ACCURACY_METRIC, keep_in_memory=True)


def build_compute_metrics(metric):
    def compute_metrics(eval_pred):
        predictions = eval_pred.predictions
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        if predictions.ndim > 1:  # logits, when preprocess_logits_for_metrics was not used
            predictions = predictions.argmax(-1)
        return metric.compute(predictions=predictions, references=eval_pred.label_ids)

    return compute_metrics


def logits_to_predictions(logits, labels):
    """Keep only the argmax during evaluation, so the Trainer does not hold all logits in memory."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


class SuspensionMonitor(TrainerCallback):
    """Measures how long the training process was suspended (`kill -STOP`/`-CONT`, Ctrl-Z then `fg`, a laptop's
    sleep), time that the Trainer's wall-clock `train_runtime` includes although nothing ran.

    A daemon thread wakes every `interval` seconds of `clock` (`time.time`, the Trainer's clock); a wake-up later
    than `interval + threshold` means the process did not run for that long. A sleeping thread that is merely
    short of CPU or of the GIL wakes within milliseconds, so busy CPUs do not count as suspension.
    """

    def __init__(self, interval: float = 1.0, threshold: float = 2.0, clock=time.time):
        self.interval = interval
        self.threshold = threshold
        self.clock = clock
        self.suspended_seconds = 0.0
        self.suspensions = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _watch(self) -> None:
        last = self.clock()
        while not self._stop.wait(self.interval):
            now = self.clock()
            late = now - last - self.interval
            if late > self.threshold:
                self.suspended_seconds += late
                self.suspensions += 1
            last = now

    def on_train_begin(self, args, state, control, **kwargs):
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="suspension-monitor", daemon=True)
        self._thread.start()

    def on_train_end(self, args, state, control, **kwargs):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.suspensions:
            logger.warning(
                "The training process was suspended %d time(s), %.1f s in all (kill -STOP, Ctrl-Z, sleep); "
                "train_runtime includes that time, run_info.json records it as suspended_seconds.",
                self.suspensions,
                self.suspended_seconds,
            )


class EpochSummaryCallback(TrainerCallback):
    """One log line per epoch: train loss, eval loss, eval accuracy, epoch time and throughput."""

    def __init__(self, train_samples: int):
        self.train_samples = train_samples
        self.last_train_loss = None
        self.epoch_start = None
        self.training = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epoch_start = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.last_train_loss = logs["loss"]

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self.training or not state.is_world_process_zero or not metrics:
            return
        parts = [f"epoch {state.epoch:.2f}/{args.num_train_epochs:g}"]
        if self.last_train_loss is not None:
            parts.append(f"train_loss {self.last_train_loss:.4f}")
        for key in ("eval_loss", "eval_accuracy"):
            if key in metrics:
                parts.append(f"{key} {metrics[key]:.4f}")
        if self.epoch_start is not None:
            elapsed = time.perf_counter() - self.epoch_start
            parts.append(f"{elapsed:.1f} s ({self.train_samples / max(elapsed, 1e-9):.0f} train img/s incl. eval)")
        logger.info(" | ".join(parts))


# ---------------------------------------------------------------------------------------------------------------
# Model, image processor, data
# ---------------------------------------------------------------------------------------------------------------


def parse_config_overrides(text: str | None) -> dict[str, Any]:
    """`hf_vit_d2l.presets.parse_config_overrides`, with its errors as `TrainingSetupError`s."""
    try:
        return presets.parse_config_overrides(text)
    except ValueError as err:
        raise TrainingSetupError(str(err)) from None


def build_model(
    model_args: ModelArguments, recipe: Recipe, label_names: list[str]
) -> tuple[ViTD2LForImageClassification, ViTD2LConfig]:
    """A fresh model from preset/config + recipe + overrides, or weights from --model_name_or_path."""
    # Book names (num_heads, num_blks ...) become canonical, so they replace the preset's/recipe's values.
    overrides = {
        ViTD2LConfig.attribute_map.get(key, key): value
        for key, value in parse_config_overrides(model_args.config_overrides).items()
    }
    if "num_labels" in overrides and overrides["num_labels"] != len(label_names):
        raise TrainingSetupError(
            f"--config_overrides num_labels={overrides['num_labels']}: the dataset has {len(label_names)} classes; "
            "the label count follows the dataset."
        )
    overrides.pop("num_labels", None)
    label_kwargs = {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }
    load_kwargs = {"cache_dir": model_args.cache_dir, "trust_remote_code": model_args.trust_remote_code}
    if model_args.attn_implementation is not None:
        load_kwargs["attn_implementation"] = model_args.attn_implementation
    try:
        if model_args.model_name_or_path:
            config = AutoConfig.from_pretrained(model_args.model_name_or_path, **load_kwargs)
            if overrides:
                config = type(config)(**{**config.to_dict(), **overrides})
            mismatched = config.num_labels != len(label_names)
            config.update(label_kwargs)
            model = AutoModelForImageClassification.from_pretrained(
                model_args.model_name_or_path, config=config, ignore_mismatched_sizes=mismatched, **load_kwargs
            )
            if mismatched:
                logger.warning("New classifier for %d labels (the checkpoint had another count).", len(label_names))
            return model, model.config
        if model_args.config_name:
            base = AutoConfig.from_pretrained(model_args.config_name, **load_kwargs).to_dict()
            for key in ("model_type", "transformers_version", "architectures", "auto_map"):
                base.pop(key, None)
        else:
            preset = model_args.preset or recipe.preset
            if preset not in PRESETS:
                raise TrainingSetupError(f"Unknown --preset {preset!r}; choose one of {sorted(PRESETS)}.")
            base = {**PRESETS[preset], **recipe.config}
        for key in ("num_labels", "id2label", "label2id", "num_classes"):
            base.pop(key, None)
        config = ViTD2LConfig(**{**base, **overrides, **label_kwargs})
        if model_args.attn_implementation is not None:
            config._attn_implementation = model_args.attn_implementation
    except (ValueError, TypeError) as err:
        if isinstance(err, TrainingSetupError):
            raise
        raise TrainingSetupError(f"Cannot build the model config: {err}") from None
    model = ViTD2LForImageClassification(config)
    return model, config


def build_image_processor(model_args: ModelArguments, config, recipe: Recipe):
    """The model's image processor with its resize following `config.image_size` (and the recipe's normalisation)."""
    size = {"height": config.image_size, "width": config.image_size}
    processor = None
    if model_args.model_name_or_path:
        try:
            processor = AutoImageProcessor.from_pretrained(
                model_args.model_name_or_path,
                cache_dir=model_args.cache_dir,
                trust_remote_code=model_args.trust_remote_code,
            )
        except (OSError, ValueError):
            processor = None
    if processor is None:
        processor = ViTD2LImageProcessor(num_channels=config.num_channels)
        if recipe.normalize:
            processor.do_normalize = True
            processor.image_mean = [FASHION_MNIST_MEAN] * config.num_channels
            processor.image_std = [FASHION_MNIST_STD] * config.num_channels
    processor.size = size
    return processor


def _data_module():
    from . import data

    return data


def load_data(data_args: DataArguments, model_args: ModelArguments, seed: int):
    """Load the dataset through `hf_vit_d2l.data`; returns (train, eval, label_names, description).

    The loader renames the image/label columns to `image`/`label` and returns `train` and `test` splits (the test
    split is Fashion-MNIST's 10,000 images, the book's evaluation set; other datasets use their validation split, or
    a seeded, stratified 15% of train when they have neither).
    """
    data = _data_module()
    size = data_args.validation_size
    if size is not None and (size <= 0 or (size > 1 and size != int(size))):
        raise TrainingSetupError(
            f"--validation_size {size:g}: give a number of training images (an integer >= 1) or a fraction "
            "between 0 and 1."
        )
    if data_args.data_source not in ("auto", "hub", "local"):
        raise TrainingSetupError(f"--data_source {data_args.data_source!r}: use 'auto', 'hub' or 'local'.")
    if data_args.data_dir is not None and not os.path.isdir(data_args.data_dir):
        raise TrainingSetupError(
            f"--data_dir {data_args.data_dir} does not exist. Point it at a folder with the four Fashion-MNIST IDX "
            f"files, or leave it out to use the Hub / {data.DEFAULT_DATA_DIR} (Debian: apt-get install "
            f"{data.DEBIAN_PACKAGE})."
        )
    try:
        dataset = data.load_image_classification_dataset(
            dataset_name=data_args.dataset_name,
            dataset_config_name=data_args.dataset_config_name,
            train_dir=data_args.train_dir,
            validation_dir=data_args.validation_dir,
            data_dir=data_args.data_dir,
            image_column_name=data_args.image_column_name,
            label_column_name=data_args.label_column_name,
            cache_dir=model_args.cache_dir,
            source=data_args.data_source,
            auto_install=data_args.auto_install_data,
            seed=seed,
        )
    except data.IDXFormatError:
        raise
    except ValueError as err:  # missing column, conflicting sources: messages name the flag to change
        raise TrainingSetupError(str(err)) from None
    if data_args.dataset_name:
        description = data_args.dataset_name
    elif data_args.train_dir:
        description = f"imagefolder:{data_args.train_dir}"
    else:
        description = getattr(dataset, "_hf_vit_d2l_source", None) or (
            f"fashion_mnist ({data_args.data_dir or 'source ' + data_args.data_source})"
        )
    train, evaluation = dataset["train"], dataset["test"]
    label_names = list(train.features["label"].names)
    if size is not None:
        count = round(size * len(train)) if size < 1 else int(size)
        if not 0 < count < len(train):
            raise TrainingSetupError(
                f"--validation_size {size:g}: the training split has {len(train)} images; hold out between 1 and "
                f"{len(train) - 1} of them (or a fraction between 0 and 1)."
            )
        parts = data.train_validation_split(train, validation_size=count, seed=data.VALIDATION_SEED)
        train, evaluation = parts["train"], parts["validation"]
        description = f"{description}, validation = {count} held-out training images (seed {data.VALIDATION_SEED})"
    return train, evaluation, label_names, description


def resolve_fast_path(
    recipe_args: RecipeArguments, training_args: TrainingArguments, model_args: ModelArguments, explicit: set[str]
) -> bool:
    """Whether to apply `hf_vit_d2l.fast.apply_fast_path`: `--fast_path` when given, else automatic.

    Automatic = on for bf16 training on a CPU (`--bf16` or `--bf16_master_weights`), unless `--attn_implementation`
    was given (the fast path runs its own eager attention). Measured on the 2-core AVX-512 CPU, book config, 8
    steps: `--bf16` 145 img/s, `--bf16 --fast_path` 215 img/s (fp32: 97 img/s). Its p rounding (<= 1/131072) is far
    below bf16's own rounding, so bf16 runs lose nothing by it; fp32 runs keep the book's exact `nn.Dropout`.
    """
    if "fast_path" in explicit:
        return recipe_args.fast_path
    wants_bf16 = training_args.bf16 or recipe_args.bf16_master_weights
    return bool(wants_bf16 and training_args.device.type == "cpu" and model_args.attn_implementation is None)


def _needs_no_resize(dataset, image_processor) -> bool:
    """Whether a preloaded grayscale dataset already has the processor's size (so 'tensor' == 'pil' exactly)."""
    images = dataset.images
    size = _data_module()._processor_size(image_processor)
    return images.ndim == 3 and getattr(image_processor, "num_channels", None) == 1 and size == images.shape[1:]


def _subset(dataset, count: int | None, seed: int):
    if count is None or count >= len(dataset):
        return dataset
    if count < 1:
        raise TrainingSetupError(f"--max_*_samples must be >= 1, got {count}.")
    return dataset.shuffle(seed=seed).select(range(count))


def hardware_description(training_args: TrainingArguments) -> str:
    device = training_args.device
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"{torch.cuda.device_count()} x {name} (CUDA), {os.cpu_count()} CPU cores"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f"CPU: {cpu}, {os.cpu_count()} cores visible, {threads} torch threads per process"


def _launch_command() -> str:
    command = " ".join(shlex.quote(a) for a in [sys.executable.rsplit("/", 1)[-1], *sys.argv])
    if "ACCELERATE_MIXED_PRECISION" in os.environ or os.environ.get("WORLD_SIZE"):
        command = f"accelerate launch (WORLD_SIZE={os.environ.get('WORLD_SIZE', '1')}) {command}"
    return command


# ---------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------


def _setup_logging(training_args: TrainingArguments) -> None:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = training_args.get_process_log_level()
    if training_args.should_log and level > logging.INFO:
        level = logging.INFO
    logger.setLevel(level)
    transformers.utils.logging.set_verbosity(min(level, logging.WARNING))
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train and evaluate; returns the final metrics (also written to `all_results.json`)."""
    return train(argv)[1]


def train(argv: list[str] | None = None) -> tuple[ViTD2LTrainer, dict[str, float]]:
    """`main`, also returning the trainer (tests use it to compare the ranks' weights)."""
    model_args, data_args, recipe_args, training_args, recipe, explicit = parse_args(argv)
    _setup_logging(training_args)
    if training_args.remove_unused_columns:
        if "remove_unused_columns" in explicit:
            logger.warning("--remove_unused_columns true would drop the image column; using false.")
        training_args.remove_unused_columns = False
    if recipe_args.bf16_master_weights and training_args.fp16:
        raise TrainingSetupError("--bf16_master_weights trains in bf16; drop --fp16.")
    global_batch = apply_batch_policy(training_args, recipe, explicit)
    if data_args.crop_padding is not None and data_args.crop_padding < 0:
        raise TrainingSetupError(f"--crop_padding must be >= 0 pixels (0: no crop), got {data_args.crop_padding}.")
    if "dataloader_pin_memory" not in explicit and not torch.cuda.is_available():
        training_args.dataloader_pin_memory = False  # nothing to pin to; silences a warning per dataloader
    logger.info(
        "Recipe %r (%s); %d process(es), global train batch %d (%d per device).",
        recipe.name,
        recipe.description,
        training_args.world_size,
        global_batch,
        training_args.per_device_train_batch_size,
    )

    check_hub_access(training_args)
    resume_from = resolve_output_dir(training_args, recipe_args)
    if recipe_args.overwrite_output_dir and training_args.should_save:
        clear_stale_checkpoints(training_args.output_dir)
    if training_args.should_save:
        shutil.rmtree(os.path.join(training_args.output_dir, CHECKPOINT_STAGING_DIR), ignore_errors=True)

    train_dataset, eval_dataset, label_names, dataset_description = load_data(
        data_args, model_args, training_args.seed
    )
    train_dataset = _subset(train_dataset, data_args.max_train_samples, training_args.seed)
    eval_dataset = _subset(eval_dataset, data_args.max_eval_samples, training_args.seed)

    # Seed before the model is built, so that the initial weights depend on --seed only.
    set_seed(training_args.seed, deterministic=training_args.full_determinism)
    model, config = build_model(model_args, recipe, label_names)
    fast_path = resolve_fast_path(recipe_args, training_args, model_args, explicit)
    if fast_path:
        from .fast import apply_fast_path

        apply_fast_path(model)
    image_processor = build_image_processor(model_args, config, recipe)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "Model: %s params, image %d px, patch %d, hidden %d, %d layers, pooling %s; data: %s, %d train / %d eval.",
        f"{n_params:,}",
        config.image_size,
        config.patch_size,
        config.hidden_size,
        config.num_hidden_layers,
        config.pooling,
        dataset_description,
        len(train_dataset),
        len(eval_dataset),
    )

    data = _data_module()
    backend = data_args.preprocessing_backend or recipe.backend
    if backend not in data.BACKENDS:
        raise TrainingSetupError(f"--preprocessing_backend {backend!r}: use one of {list(data.BACKENDS)}.")
    augmentation = data_args.augmentation or ("improved" if recipe.augment else "none")
    if augmentation not in ("none", "improved"):
        raise TrainingSetupError(f"--augmentation {augmentation!r}: use 'none' or 'improved'.")
    # Augmentation draws from torch's global RNG (seed=None), which set_seed seeds and checkpoints save/restore.
    collator = data.ImageClassificationCollator(
        image_processor,
        augment=None if augmentation == "none" else augmentation,
        backend=backend,
        crop_padding=recipe.crop_padding if data_args.crop_padding is None else data_args.crop_padding,
        erasing_prob=recipe.erasing_prob,
    )
    preload = recipe.preload_images if data_args.preload_images is None else data_args.preload_images
    eval_backend = "pil"
    if preload:
        try:
            train_dataset = data.PreloadedImageDataset(train_dataset)
            eval_dataset = data.PreloadedImageDataset(eval_dataset)
        except ValueError as err:
            raise TrainingSetupError(str(err)) from None
        if backend == "tensor" and _needs_no_resize(eval_dataset, image_processor):
            eval_backend = "tensor"  # without a resize the tensor path gives the processor's numbers bit for bit
    eval_collator = data.ImageClassificationCollator(image_processor, backend=eval_backend)

    run_info = {
        "recipe": recipe.name,
        "command": _launch_command(),
        "hardware": hardware_description(training_args),
        "seed": training_args.seed,
        "num_processes": training_args.world_size,
        "global_batch_size": global_batch,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "dataset": dataset_description,
        "augmentation": augmentation,
        "preprocessing_backend": backend,
        "eval_preprocessing_backend": eval_backend,
        "preload_images": bool(preload),
        "train_samples": len(train_dataset),
        "eval_samples": len(eval_dataset),
        "eval_split": "validation" if data_args.validation_size is not None else "test",
        "num_parameters": n_params,
        "mixed_precision": "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "no",
        "fast_path": bool(fast_path),
        "bf16_master_weights": recipe_args.bf16_master_weights,
        "torch_compile": bool(training_args.torch_compile),
        "torch_threads_per_process": torch.get_num_threads(),
        "resumed_from": resume_from,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }

    metric = load_accuracy_metric()
    suspension_monitor = SuspensionMonitor()
    trainer = ViTD2LTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        eval_data_collator=eval_collator,
        processing_class=image_processor,
        compute_metrics=build_compute_metrics(metric),
        preprocess_logits_for_metrics=logits_to_predictions,
        callbacks=[EpochSummaryCallback(len(train_dataset)), suspension_monitor],
        bf16_master_weights=recipe_args.bf16_master_weights,
    )
    if training_args.should_save:
        write_json_atomic(os.path.join(training_args.output_dir, "run_info.json"), run_info)

    train_result = trainer.train(resume_from_checkpoint=resume_from)
    trainer.restore_fp32()  # bf16 master-weight training: the final model (saved and evaluated) is fp32
    trainer.save_model()  # model (atomic save_pretrained: safetensors, code files, full auto_map) + image processor
    train_metrics = dict(train_result.metrics)
    train_metrics["train_samples"] = len(train_dataset)
    trainer.log_metrics("train", train_metrics)
    trainer.save_metrics("train", train_metrics)
    trainer.save_state()

    eval_metrics = trainer.evaluate()
    eval_metrics["eval_samples"] = len(eval_dataset)
    trainer.log_metrics("eval", eval_metrics)
    trainer.save_metrics("eval", eval_metrics)

    if trainer.is_world_process_zero():
        from .plotting import plot_training_curves

        run_info["train_runtime"] = train_metrics.get("train_runtime")
        # Wall-clock time in train_runtime during which the process was stopped (not running at all).
        run_info["suspended_seconds"] = round(suspension_monitor.suspended_seconds, 1)
        run_info["eval_accuracy"] = eval_metrics.get("eval_accuracy")
        write_json_atomic(os.path.join(training_args.output_dir, "run_info.json"), run_info)
        plot_training_curves(
            trainer.state.log_history,
            os.path.join(training_args.output_dir, "training_curves.png"),
            title=f"ViT (d2l), recipe {recipe.name}",
        )
    if training_args.push_to_hub:
        trainer.push_to_hub(
            commit_message=f"Train with recipe {recipe.name}",
            tasks="image-classification",
            dataset_tags="zalando-datasets/fashion_mnist" if not data_args.dataset_name else data_args.dataset_name,
        )
    return trainer, {**train_metrics, **eval_metrics}


def run(argv: list[str] | None = None) -> int:
    """Entry point for scripts: clear one-paragraph errors for bad input instead of tracebacks."""
    try:
        main(argv)
    except TrainingSetupError as err:
        logger.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        data = sys.modules.get("hf_vit_d2l.data")
        known = tuple(
            cls for cls in (getattr(data, "DataUnavailableError", None), getattr(data, "IDXFormatError", None)) if cls
        )
        if known and isinstance(err, known):
            logger.error("%s", err)
            print(f"error: {err}", file=sys.stderr)
            return 2
        raise
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Evaluation of a saved model (scripts/evaluate.py)
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class EvaluateArguments:
    """`scripts/evaluate.py`: a saved folder or Hub id, evaluated on a test split."""

    model_name_or_path: str = field(metadata={"help": "A folder written by scripts/train.py, or a Hub id."})
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Where eval_results.json and confusion_matrix.png go. Default: the model folder."},
    )
    batch_size: int = field(default=256, metadata={"help": "Images per forward pass."})
    device: str | None = field(default=None, metadata={"help": "'cpu', 'cuda', 'cuda:1'... Default: cuda if any."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow running a Hub model's own code (not needed for vit_d2l models)."}
    )
    test_time_flip: bool | None = field(
        default=None,
        metadata={
            "help": "Override the model's config.test_time_flip (average with the mirror image's logits). Default: "
            "the saved config's."
        },
    )


def _label_mapping(dataset_names: list[str], model_id2label: dict) -> np.ndarray:
    """Dataset label index -> model label index (by name when they match, else by position)."""
    model_names = [model_id2label[i] for i in sorted(model_id2label, key=int)]
    if dataset_names == model_names:
        return np.arange(len(dataset_names))
    if sorted(dataset_names) == sorted(model_names):
        logger.info("Dataset and model list the same classes in a different order; matching them by name.")
        return np.array([model_names.index(name) for name in dataset_names])
    if len(dataset_names) == len(model_names):
        logger.warning(
            "Dataset class names %s differ from the model's %s; matching them by position.",
            dataset_names[:3],
            model_names[:3],
        )
        return np.arange(len(dataset_names))
    raise TrainingSetupError(
        f"The dataset has {len(dataset_names)} classes but the model predicts {len(model_names)}; evaluate it on "
        "the dataset it was trained for."
    )


@torch.no_grad()
def evaluate_saved_model(eval_args: EvaluateArguments, data_args: DataArguments) -> dict[str, Any]:
    """Accuracy, loss, per-class accuracy and confusion matrix of a saved model on the test split.

    Writes `eval_results.json` and `confusion_matrix.png` into `eval_args.output_dir` (default: the model folder).
    """
    from .plotting import plot_confusion_matrix

    path = eval_args.model_name_or_path
    looks_local = path.startswith((".", "/", "~")) or path.count("/") > 1
    if looks_local and not os.path.isdir(path):
        raise TrainingSetupError(f"--model_name_or_path {path}: no such folder.")
    output_dir = eval_args.output_dir
    if output_dir is None:
        if not os.path.isdir(eval_args.model_name_or_path):
            raise TrainingSetupError(
                f"{eval_args.model_name_or_path} is not a local folder; pass --output_dir for the results."
            )
        output_dir = eval_args.model_name_or_path
    if eval_args.batch_size < 1:
        raise TrainingSetupError(f"--batch_size must be >= 1, got {eval_args.batch_size}.")
    try:
        model = AutoModelForImageClassification.from_pretrained(path, trust_remote_code=eval_args.trust_remote_code)
        processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=eval_args.trust_remote_code)
    except OSError as err:
        raise TrainingSetupError(f"Cannot load a model and image processor from {path}: {err}") from None
    if eval_args.test_time_flip is not None:
        if not hasattr(model.config, "test_time_flip"):
            raise TrainingSetupError(
                f"--test_time_flip needs a vit_d2l model; {path} is a {model.config.model_type!r} model."
            )
        model.config.test_time_flip = eval_args.test_time_flip
    device = torch.device(eval_args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device).eval()

    model_args = ModelArguments()
    _, test, label_names, description = load_data(data_args, model_args, seed=42)
    test = _subset(test, data_args.max_eval_samples, 42)
    mapping = _label_mapping(label_names, model.config.id2label)
    num_labels = model.config.num_labels
    names = [model.config.id2label[i] for i in range(num_labels)]

    collator = _data_module().ImageClassificationCollator(processor, backend="pil")
    loader = torch.utils.data.DataLoader(test, batch_size=eval_args.batch_size, collate_fn=collator)
    total_loss, predictions, references = 0.0, [], []
    start = time.perf_counter()
    for batch in loader:
        labels = torch.from_numpy(mapping[batch["labels"].numpy()]).to(device)
        logits = model(pixel_values=batch["pixel_values"].to(device)).logits.float()
        total_loss += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        predictions.append(logits.argmax(-1).cpu().numpy())
        references.append(labels.cpu().numpy())
    elapsed = time.perf_counter() - start
    predictions, references = np.concatenate(predictions), np.concatenate(references)
    matrix = np.bincount(references * num_labels + predictions, minlength=num_labels * num_labels).reshape(
        num_labels, num_labels
    )
    support = matrix.sum(axis=1)
    per_class = {name: (float(matrix[i, i] / support[i]) if support[i] else None) for i, name in enumerate(names)}
    results = {
        "accuracy": float((predictions == references).mean()),
        "loss": total_loss / len(references),
        "num_samples": int(len(references)),
        "per_class_accuracy": per_class,
        "confusion_matrix": matrix.tolist(),
        "labels": names,
        "model": path,
        "dataset": description,
        "device": str(device),
        "test_time_flip": bool(getattr(model.config, "test_time_flip", False)),
        "samples_per_second": len(references) / elapsed,
    }
    write_json_atomic(os.path.join(output_dir, "eval_results.json"), results)
    plot_confusion_matrix(
        matrix,
        names,
        os.path.join(output_dir, "confusion_matrix.png"),
        title=f"accuracy {results['accuracy']:.2%} on {len(references):,} test images",
    )
    return results


def evaluate_main(argv: list[str] | None = None) -> int:
    """Entry point of scripts/evaluate.py."""
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    parser = HfArgumentParser((EvaluateArguments, DataArguments))
    try:
        eval_args, data_args = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
        results = evaluate_saved_model(eval_args, data_args)
    except TrainingSetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        data = sys.modules.get("hf_vit_d2l.data")
        known = tuple(
            cls for cls in (getattr(data, "DataUnavailableError", None), getattr(data, "IDXFormatError", None)) if cls
        )
        if known and isinstance(err, known):
            print(f"error: {err}", file=sys.stderr)
            return 2
        raise
    width = max(len(name) for name in results["labels"])
    print(f"accuracy {results['accuracy']:.4f}  loss {results['loss']:.4f}  ({results['num_samples']} images)")
    for name, value in results["per_class_accuracy"].items():
        print(f"  {name:<{width}}  {'n/a' if value is None else f'{value:.4f}'}")
    return 0


__all__ = [
    "DataArguments",
    "ModelArguments",
    "RECIPES",
    "Recipe",
    "RecipeArguments",
    "TrainingSetupError",
    "ViTD2LTrainer",
    "get_last_checkpoint",
    "load_accuracy_metric",
    "main",
    "parse_args",
    "run",
    "train",
    "EvaluateArguments",
    "evaluate_main",
    "evaluate_saved_model",
]
