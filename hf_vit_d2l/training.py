"""Training of the book's ViT with the Hugging Face `Trainer`: the library side of `scripts/train.py`.

As in transformers' `run_image_classification.py`, `HfArgumentParser` parses the argument dataclasses, here with a
recipe's values (`recipes/*.json` or `--recipe FILE`) as defaults, and `main()` runs named steps.
"""

import argparse
import contextlib
import dataclasses
import fcntl
import gc
import json
import logging
import math
import os
import platform
import shlex
import shutil
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers
from huggingface_hub.errors import StrictDataclassError
from transformers import (
    AutoConfig,
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
    set_seed,
)
from transformers.models.auto.image_processing_auto import AutoImageProcessor
from transformers.trainer_utils import sort_checkpoints

from . import data
from .configuration_vit_d2l import ViTD2LConfig
from .ema import EMACallback
from .evaluation import ModelLoadError, check_model_config, count_parameters, load_model, read_json
from .fast_dropout import replace_dropout_modules
from .hub import HubPushError, push_to_hub, redact_hub_token
from .image_processing_vit_d2l import ViTD2LImageProcessor
from .modeling_vit_d2l import ViTD2LForImageClassification
from .presets import PRESETS, parse_config_overrides
from .utils import cpu_count, cpu_has_native_bf16, cpu_isa, hub_available, save_folder_atomically, write_json_atomic

logger = logging.getLogger(__name__)

LOCK_FILE = ".train.lock"  # in --output_dir; hidden, so a folder holding only it counts as empty
RECIPE_DIR = Path(__file__).resolve().parent / "recipes"  # package data: a wheel trains too
# Config fields whose change makes a checkpoint's weights or meaning incompatible with the run resuming from it.
ARCHITECTURE_FIELDS = (
    "image_size",
    "patch_size",
    "num_channels",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_hidden_layers",
    "qkv_bias",
    "pooling",
    "num_labels",
)


class TrainingSetupError(ValueError):
    """Bad arguments or inputs found before any training time is spent; the message says what to change."""


@dataclass
class ModelArguments:
    """What to train: a fresh model from a preset (default: the recipe's), or a saved folder / Hub id."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Start from these weights: a folder saved by save_pretrained or a Hub id."}
    )
    config_name: str | None = field(
        default=None, metadata={"help": "A config (folder or Hub id) for a fresh model, instead of --preset."}
    )
    preset: str = field(default="vit_d2l_fashion_mnist", metadata={"help": f"Model preset: {sorted(PRESETS)}."})
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Config changes applied last, e.g. 'hidden_size=64,num_blks=1' (HF or book names)."},
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "'eager' (the book's math) or 'sdpa'."})
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "Fine-tune --model_name_or_path on a dataset with another label count (new classifier)."},
    )
    model_revision: str = field(
        default="main", metadata={"help": "The branch, tag or commit sha of --model_name_or_path on the Hub."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the Hub."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache Hub downloads."})

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"--preset {self.preset!r}: choose one of {sorted(PRESETS)}.")


@dataclass
class RunArguments:
    """The recipe and the run-level switches that `TrainingArguments` does not have."""

    recipe: str = field(default="book", metadata={"help": "'book', 'improved', 'quick' or a recipe JSON file."})
    global_batch_size: int = field(
        default=128,
        metadata={
            "help": "Images per optimizer step over all processes: per device = global / (processes x "
            "accumulation), rounded up. An explicit --per_device_train_batch_size wins."
        },
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Train from scratch in a non-empty --output_dir (removes its checkpoints)."}
    )
    num_threads: int | None = field(
        default=None, metadata={"help": "torch threads per process on a CPU. Default: the CPUs / local processes."}
    )
    ema_decay: float | None = field(
        default=None,
        metadata={
            "help": "Keep an exponential moving average of the weights with this decay per step (e.g. 0.999); "
            "evaluate and save the average. Checkpoints keep both, so resuming continues both."
        },
    )
    fast_dropout: bool = field(
        default=False,
        metadata={
            "help": "Swap the model's nn.Dropout modules for a CPU dropout that draws its mask faster (same "
            "probabilities, another random stream). Training only: saved folders keep the book's nn.Dropout."
        },
    )


ARGUMENT_CLASSES = (ModelArguments, data.DataArguments, RunArguments, TrainingArguments)


def load_recipe(name: str) -> dict:
    """A recipe's defaults: `hf_vit_d2l/recipes/NAME.json`, or the JSON file at path `name`."""
    path = Path(name) if name.endswith(".json") else RECIPE_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPE_DIR.glob("*.json"))
        raise TrainingSetupError(f"--recipe {name}: no {path}. Use one of {known} or a recipe JSON file.")
    values = read_json_arguments(path, f"--recipe {name}")
    return {"recipe": name, **{key: value for key, value in values.items() if not key.startswith("_")}}


def read_json_arguments(path: Path, what: str) -> dict:
    """The arguments in a JSON file (a recipe, or a file of arguments), checked against the argument fields."""
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise TrainingSetupError(f"{what}: {path} is not readable JSON ({err}).") from None
    if not isinstance(values, dict):
        raise TrainingSetupError(f"{what}: {path} must hold one JSON object of argument names and values.")
    known = {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls)}
    unknown = sorted(key for key in values if key not in known and not key.startswith("_"))
    if unknown:
        raise TrainingSetupError(
            f"{what}: {path} has unknown arguments {unknown}. Use the names of `scripts/train.py --help` "
            "(keys starting with _ are comments)."
        )
    return values


def parse_args(argv: list[str] | None = None):
    """`(model_args, data_args, run_args, training_args, explicit)`: the recipe's values as defaults, the command
    line (or one JSON file of arguments, as in transformers' examples) on top; `explicit` names the given flags."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    if not (torch.cuda.is_available() or torch.backends.mps.is_available()):
        parser.set_defaults(use_cpu=True)  # so CPU runs (bf16 autocast, gloo DDP) need no --use_cpu
    try:
        if len(argv) == 1 and argv[0].endswith(".json"):
            given = read_json_arguments(Path(argv[0]), "arguments file")
            parsed = parser.parse_dict({**load_recipe(given.get("recipe", "book")), **given})
            return (*parsed, set(given))
        recipe = argparse.ArgumentParser(add_help=False)
        recipe.add_argument("--recipe", default="book")
        parser.set_defaults(**load_recipe(recipe.parse_known_args(argv)[0].recipe))
        parsed = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    except ValueError as err:  # the dataclasses' own checks (__post_init__), TrainingArguments' included
        raise TrainingSetupError(str(err)) from None
    explicit = {arg[2:].split("=", 1)[0].replace("-", "_") for arg in argv if arg.startswith("--")}
    return (*parsed, explicit)


# ------------------------------------------------------------------------------------------- checks of the run


def check_arguments(training_args: TrainingArguments, run_args: RunArguments) -> None:
    """Refuse values that would fail, train nothing or train many times slower, before any data is loaded."""
    problems = []
    if not training_args.output_dir or not training_args.output_dir.strip():
        problems.append("--output_dir is empty: name the folder to train into")
    if training_args.max_steps <= 0 and training_args.num_train_epochs <= 0:
        problems.append(f"--num_train_epochs {training_args.num_train_epochs} trains nothing: give a positive number")
    if training_args.learning_rate < 0:
        problems.append(f"--learning_rate {training_args.learning_rate} is negative")
    if training_args.per_device_train_batch_size < 1 or training_args.per_device_eval_batch_size < 1:
        problems.append("the per-device batch sizes must be at least 1")
    if run_args.global_batch_size < 1:
        problems.append(f"--global_batch_size {run_args.global_batch_size} must be at least 1")
    if run_args.ema_decay is not None and not 0 < run_args.ema_decay < 1:
        problems.append(f"--ema_decay {run_args.ema_decay} must be between 0 and 1")
    if training_args.device.type == "cpu" and training_args.bf16 and not cpu_has_native_bf16():
        problems.append(
            f"--bf16 on this CPU ({cpu_isa()}, no native bf16: no avx512_bf16/amx_bf16) runs bf16 matrix products "
            "in a slow fallback, many times slower than fp32. Train in fp32 (drop --bf16); bf16 pays on GPUs and "
            "on CPUs with AVX512-BF16 or AMX"
        )
    if problems:
        raise TrainingSetupError("; ".join(problems) + ".")


def compiler_problems(training_args: TrainingArguments) -> list[str]:
    """What --torch_compile lacks on this CPU: inductor's C++ compiler and Python's headers (its kernels include
    Python.h). Empty when nothing is missing or compilation is off."""
    if not (training_args.torch_compile and training_args.device.type == "cpu"):
        return []
    problems = []
    compiler = os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")  # inductor's default
    if shutil.which(compiler) is None:
        problems.append(f"no C++ compiler {compiler!r} on PATH")
    headers = Path(sysconfig.get_path("include"), "Python.h")  # macOS framework builds keep theirs elsewhere
    if not headers.exists() and sys.platform != "darwin":
        problems.append(f"no Python headers ({headers})")
    return problems


def per_device_batch(training_args: TrainingArguments, global_batch: int) -> int:
    """The per-device batch that gives `global_batch` images per optimizer step (rounded up)."""
    replicas = data_parallel_replicas(training_args)
    return math.ceil(global_batch / (replicas * training_args.gradient_accumulation_steps))


def data_parallel_replicas(training_args: TrainingArguments) -> int:
    """Processes, or the GPUs of one process under DataParallel (a process of a multi-process run has one)."""
    return max(1, training_args.n_gpu) * training_args.world_size


def resolve_run_settings(training_args: TrainingArguments, run_args: RunArguments, explicit: set[str]) -> int:
    """Fit `training_args` to this machine and the recipe, logging every change; returns the global batch."""
    if training_args.device.type == "cpu":  # accelerate launch sets OMP_NUM_THREADS=1, which would idle cores
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(run_args.num_threads or max(1, cpu_count() // local_processes))
    missing = compiler_problems(training_args)
    if missing:
        logger.warning(
            "--torch_compile: %s, which torch.compile needs on a CPU; training without compilation. Install them "
            "(e.g. `apt-get install g++ python3-dev`) or set CXX to compile.",
            " and ".join(missing),
        )
        training_args.torch_compile = False
        training_args.torch_compile_backend = None  # the Trainer reads these too
        training_args.torch_compile_mode = None
    replicas = data_parallel_replicas(training_args)
    accumulation = training_args.gradient_accumulation_steps
    if "per_device_train_batch_size" not in explicit:
        training_args.per_device_train_batch_size = per_device_batch(training_args, run_args.global_batch_size)
    global_batch = training_args.per_device_train_batch_size * replicas * accumulation
    if "per_device_train_batch_size" in explicit:
        logger.info("Global batch %d from --per_device_train_batch_size.", global_batch)
    elif global_batch != run_args.global_batch_size:
        logger.warning(
            "The global batch %d does not divide over %d processes x %d accumulation steps: %d per device.",
            run_args.global_batch_size,
            replicas,
            accumulation,
            training_args.per_device_train_batch_size,
        )
    if training_args.remove_unused_columns:
        logger.info("remove_unused_columns set to False: the transforms read the image and label columns.")
        training_args.remove_unused_columns = False
    return global_batch


def check_hub_access(training_args: TrainingArguments) -> str | None:
    """With --push_to_hub, the repository to push to (--hub_model_id, or the user's namespace and the output folder's
    name); fails now (before data and training) when the Hub is unreachable or no token works."""
    if not training_args.push_to_hub:
        return None
    hint = f"Drop --push_to_hub; push the finished folder with scripts/push_to_hub.py {training_args.output_dir}."
    if not hub_available():
        raise TrainingSetupError(f"--push_to_hub needs the Hugging Face Hub, which is offline or unreachable. {hint}")
    from huggingface_hub import HfApi

    try:
        user = HfApi().whoami(token=training_args.hub_token)["name"]
    except Exception as err:
        raise TrainingSetupError(f"--push_to_hub: the Hub refused the token ({err}); run `hf auth login`. {hint}")
    repo_id = training_args.hub_model_id or os.path.basename(os.path.normpath(training_args.output_dir))
    return repo_id if "/" in repo_id else f"{user}/{repo_id}"


def checkpoint_problem(path: str) -> str | None:
    """What makes a checkpoint folder unusable for resuming, or None. The Trainer writes `trainer_state.json` last,
    so a checkpoint without it was cut short while saving."""
    state = os.path.join(path, "trainer_state.json")
    if not os.path.isfile(state):
        return f"{state} is missing (the save was interrupted)"
    try:
        read_json(state)
        if not count_parameters(path):  # reads every weight file's header, as loading will
            return f"{path} holds no model.safetensors"
    except ModelLoadError as err:
        return str(err).rstrip(".")  # the callers end the sentence
    return None


def resolve_checkpoint(training_args: TrainingArguments, overwrite: bool) -> str | None:
    """The checkpoint to resume from: --resume_from_checkpoint, else the newest intact one in --output_dir (a damaged
    one is skipped with a warning). With `overwrite`, none: the saving rank removes them to start afresh."""
    output_dir = training_args.output_dir
    explicit = training_args.resume_from_checkpoint
    if explicit and explicit.lower() not in ("true", "1", "yes"):
        problem = checkpoint_problem(explicit)
        if problem:
            raise TrainingSetupError(f"--resume_from_checkpoint {explicit}: {problem}. Pass an intact checkpoint-N.")
        return explicit
    if not os.path.isdir(output_dir):
        return None
    checkpoints = sort_checkpoints(output_dir)[::-1]  # newest first
    if overwrite:
        if training_args.should_save:
            for path in checkpoints:
                logger.info("Removing %s (--overwrite_output_dir).", path)
                shutil.rmtree(path)
        return None
    for path in checkpoints:
        problem = checkpoint_problem(path)
        if problem is None:
            logger.info("Resuming from %s (pass --overwrite_output_dir to start afresh).", path)
            return path
        logger.warning("Not resuming from %s: %s.", path, problem)
    if checkpoints:
        raise TrainingSetupError(
            f"No intact checkpoint in {output_dir}: delete the damaged ones ({', '.join(checkpoints)}) to start "
            "afresh, or pass --overwrite_output_dir."
        )
    leftovers = sorted(n for n in os.listdir(output_dir) if n not in ("runs", "run_info.json") and n[0] != ".")
    if leftovers:
        raise TrainingSetupError(
            f"--output_dir {output_dir} is not empty ({', '.join(leftovers[:5])}) and holds no checkpoint to resume "
            "from. Pass --overwrite_output_dir to train from scratch in it, or choose another --output_dir."
        )
    return None


def check_checkpoint_matches(checkpoint: str | None, config) -> None:
    """Stop with both values named when the checkpoint's model differs from the one this run builds."""
    if checkpoint is None:
        return
    saved = read_json(os.path.join(checkpoint, "config.json"))
    for name in ARCHITECTURE_FIELDS:
        if name in saved and saved[name] != getattr(config, name):
            raise TrainingSetupError(
                f"{checkpoint} was trained with {name}={saved[name]!r}, but this run builds {name}="
                f"{getattr(config, name)!r} (--recipe / --preset / --config_overrides). Resume with the settings of "
                "that run, or start afresh with --overwrite_output_dir or another --output_dir."
            )


# ------------------------------------------------------------------------------------- model, processor, data


def build_model(model_args: ModelArguments, label_names: list[str]):
    """A fresh model from the preset (or --config_name) and --config_overrides, or --model_name_or_path's."""
    try:
        overrides = parse_config_overrides(model_args.config_overrides)
    except ValueError as err:
        raise TrainingSetupError(str(err)) from None
    # Book names (num_heads, num_blks ...) become canonical, so that they replace the preset's values.
    overrides = {ViTD2LConfig.attribute_map.get(key, key): value for key, value in overrides.items()}
    labels = {"id2label": dict(enumerate(label_names)), "label2id": {n: i for i, n in enumerate(label_names)}}
    hub = {
        "cache_dir": model_args.cache_dir,
        "trust_remote_code": model_args.trust_remote_code,
        "revision": model_args.model_revision,
    }
    try:
        if model_args.model_name_or_path:
            local_config = Path(model_args.model_name_or_path, "config.json")
            if local_config.is_file():  # a foreign model_type gets one line naming it, not transformers' errors
                check_model_config(read_json(str(local_config)), str(local_config), model_args.trust_remote_code)
            config = AutoConfig.from_pretrained(model_args.model_name_or_path, **hub)
            if config.num_labels != len(label_names) and not model_args.ignore_mismatched_sizes:
                raise TrainingSetupError(
                    f"{model_args.model_name_or_path} predicts {config.num_labels} classes, the dataset has "
                    f"{len(label_names)}. Pass --ignore_mismatched_sizes to fine-tune it with a new classifier."
                )
            config.update({**overrides, **labels})
            # Strict: weights that do not fit the config are refused, not replaced by random ones.
            return load_model(
                model_args.model_name_or_path,
                ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
                config=config,
                attn_implementation=model_args.attn_implementation,
                **hub,
            )
        if model_args.config_name:
            base = AutoConfig.from_pretrained(model_args.config_name, **hub).to_dict()
        else:
            base = dict(PRESETS[model_args.preset])
        for key in ("model_type", "transformers_version", "architectures", "auto_map", "num_labels", "num_classes"):
            base.pop(key, None)
        config = ViTD2LConfig(**{**base, **overrides, **labels})
    except (ValueError, TypeError, OSError, StrictDataclassError) as err:
        if isinstance(err, TrainingSetupError):
            raise
        raise TrainingSetupError(f"Cannot build the model: {err}") from None
    return ViTD2LForImageClassification(config, attn_implementation=model_args.attn_implementation)


def build_image_processor(model_args: ModelArguments, config, normalize: bool):
    """The saved model's image processor, or the book's transform (Fashion-MNIST normalisation if asked), resizing
    to `config.image_size`."""
    if model_args.model_name_or_path:
        processor = AutoImageProcessor.from_pretrained(
            model_args.model_name_or_path,
            cache_dir=model_args.cache_dir,
            trust_remote_code=model_args.trust_remote_code,
            revision=model_args.model_revision,
        )
    else:
        processor = ViTD2LImageProcessor(num_channels=config.num_channels)
        if normalize:
            processor.do_normalize = True
            processor.image_mean = [data.FASHION_MNIST_MEAN] * config.num_channels
            processor.image_std = [data.FASHION_MNIST_STD] * config.num_channels
    processor.size = {"height": config.image_size, "width": config.image_size}
    return processor


def prepare_datasets(train, evaluation, processor, data_args: data.DataArguments):
    """Per-split preprocessing: the training split augmented (if asked), the evaluation split as at inference."""
    augment = data_args.augmentation == "improved"
    train_transform = data.ImageClassificationCollator(
        processor,
        augment,
        data_args.preprocessing_backend,
        data_args.crop_padding,
        erasing_prob=data_args.erasing_prob,
    ).transform
    # Evaluation uses the processor itself unless the tensor path is exact: preloaded images needing no resize.
    size = (processor.size["height"], processor.size["width"])
    exact = data_args.preload_images and np.asarray(evaluation[0]["image"]).shape[:2] == size
    eval_backend = data_args.preprocessing_backend if exact else "pil"
    eval_transform = data.ImageClassificationCollator(processor, backend=eval_backend).transform
    if data_args.preload_images:
        try:
            return data.PreloadedImageDataset(train, train_transform), data.PreloadedImageDataset(
                evaluation, eval_transform
            )
        except ValueError as err:
            raise TrainingSetupError(str(err)) from None
    train.set_transform(train_transform)
    evaluation.set_transform(eval_transform)
    return train, evaluation


# ------------------------------------------------------------------------------------------------- the Trainer


def compute_metrics(eval_pred) -> dict[str, float]:
    """Accuracy through `evaluate`, from the metric script shipped in the package (`accuracy_metric.py`)."""
    from .accuracy_metric import load_accuracy  # evaluate loads when the first evaluation does, not at start-up

    predictions, labels = eval_pred
    return load_accuracy().compute(predictions=predictions, references=labels)


def logits_to_predictions(logits, labels):
    """Keep only the argmax during evaluation, so the Trainer does not hold all logits in memory."""
    return (logits[0] if isinstance(logits, tuple) else logits).argmax(dim=-1)


class EpochSummaryCallback(TrainerCallback):
    """One log line per epoch: train loss, eval loss and accuracy, seconds and training images per second."""

    def __init__(self, global_batch_size: int):
        self.global_batch_size = global_batch_size  # images per optimizer step, over all processes
        self.epoch_start = self.start_step = self.train_loss = None

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epoch_start, self.start_step = time.perf_counter(), state.global_step

    def on_train_end(self, args, state, control, **kwargs):
        self.epoch_start = None  # the final evaluate() is no epoch

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.train_loss = (logs or {}).get("loss", self.train_loss)
        # Without evaluation during training, the epoch's own training log is the moment to summarise it.
        if args.eval_strategy == "no" and "loss" in (logs or {}) and float(state.epoch).is_integer():
            self.log_epoch(args, state)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics:
            self.log_epoch(args, state, metrics)

    def log_epoch(self, args, state, metrics: dict | None = None) -> None:
        """The epoch's line; the eval fields only where an evaluation gave `metrics`."""
        if self.epoch_start is None or not state.is_world_process_zero:
            return
        seconds = time.perf_counter() - self.epoch_start
        # Optimizer steps times the global batch (an epoch's last batch may be smaller; --max_steps may end early).
        images = (state.global_step - self.start_step) * self.global_batch_size
        train_loss = f"{self.train_loss:.4f}" if self.train_loss else "-"
        line = f"epoch {state.epoch:.2f}/{args.num_train_epochs:g} | train_loss {train_loss}"
        if metrics:
            loss = metrics.get("eval_loss", float("nan"))
            accuracy = metrics.get("eval_accuracy", float("nan"))
            line += f" | eval_loss {loss:.4f} | eval_accuracy {accuracy:.4f}"
        logger.info("%s | %.1f s (%.0f train img/s)", line, seconds, images / max(seconds, 1e-9))


def save_final_model(trainer: Trainer) -> None:
    """The model, code files and image processor in --output_dir, moved in whole (config.json last)."""
    if trainer.is_fsdp_enabled:
        # fully_shard swaps the model's class for torch's FSDP subclass, whose save_pretrained would ship torch's
        # files as the remote code: save the gathered weights through a plain model instead.
        state_dict = trainer.accelerator.get_state_dict(trainer.model)  # collective: every rank
        if trainer.args.should_save:
            plain = ViTD2LForImageClassification(trainer.model.config)
            plain.load_state_dict(state_dict)

            def write(folder):
                plain.save_pretrained(folder)
                trainer.processing_class.save_pretrained(folder)

            save_folder_atomically(trainer.args.output_dir, write)
    elif trainer.args.should_save:
        save_folder_atomically(trainer.args.output_dir, trainer.save_model)
    else:
        trainer.save_model()  # the other ranks' part of a collective save; writes nothing


# ------------------------------------------------------------------------------------------------------- main


def setup_logging(training_args: TrainingArguments) -> None:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = min(training_args.get_process_log_level(), logging.INFO if training_args.should_log else logging.WARNING)
    logger.setLevel(level)
    transformers.utils.logging.set_verbosity(max(level, logging.WARNING))
    transformers.utils.logging.enable_explicit_format()


def main(argv: list[str] | None = None) -> tuple[Trainer, dict[str, float]]:
    """Train and evaluate; returns the trainer and the final metrics (also in `all_results.json`)."""
    model_args, data_args, run_args, training_args, explicit = parse_args(argv)
    setup_logging(training_args)

    # Check the run and fit its settings to this machine before spending time on data
    check_arguments(training_args, run_args)
    global_batch = resolve_run_settings(training_args, run_args, explicit)
    push_repo_id = check_hub_access(training_args)
    # One push at the end, through the same staging as push_to_hub.py (no pickles, links or tokens), instead of the
    # Trainer's, which uploads the output folder as it is at every save.
    training_args.push_to_hub = False
    keep_token_out_of_files(training_args)
    with output_dir_lock(training_args):
        return train_in_output_dir(model_args, data_args, run_args, training_args, global_batch, push_repo_id)


def take_lock(output_dir: str):
    """`output_dir`'s lock file, open, locked and holding this PID; or, as a string, why it cannot be."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        lock = open(os.path.join(output_dir, LOCK_FILE), "a+")  # noqa: SIM115 (held open, and so locked, for the run)
    except OSError as err:
        return f"cannot write there ({err.strerror})"
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        return f"in use by another training run (PID {holder})"
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


@contextlib.contextmanager
def output_dir_lock(training_args: TrainingArguments):
    """Hold an exclusive `fcntl.flock` on `--output_dir/.train.lock` for the run, so that a second run into the same
    folder stops at once, naming the first run's PID. Global rank 0 takes it and tells the other ranks and machines,
    which share the folder; the lock goes with the process, so a crashed run leaves none behind."""
    lock = take_lock(training_args.output_dir) if training_args.process_index == 0 else None
    problem = [lock if isinstance(lock, str) else None]
    if training_args.world_size > 1:
        torch.distributed.broadcast_object_list(problem, src=0)
    if problem[0]:
        raise TrainingSetupError(
            f"--output_dir {training_args.output_dir}: {problem[0]}. Wait for it to end, or choose another "
            "--output_dir."
        )
    try:
        yield
    finally:
        if lock is not None:
            lock.close()  # releases the flock


def train_in_output_dir(model_args, data_args, run_args, training_args, global_batch: int, push_repo_id):
    """The run's steps once its output folder is its own: resume or start, data, model, Trainer, train."""
    checkpoint = resolve_checkpoint(training_args, run_args.overwrite_output_dir)
    logger.info(
        "Recipe %s; %d process(es), global batch %d (%d per device); %d torch thread(s) per process.",
        run_args.recipe,
        training_args.world_size,
        global_batch,
        training_args.per_device_train_batch_size,
        torch.get_num_threads(),
    )

    # Load the dataset
    try:
        train_dataset, eval_dataset, label_names, description = data.load_splits(
            data_args, training_args.seed, model_args.cache_dir
        )
    except ValueError as err:  # a missing column, a bad hold-out size: the message names the flag
        if isinstance(err, data.IDXFormatError):
            raise
        raise TrainingSetupError(str(err)) from None

    # Model and image processor (seeded first, so the initial weights depend on --seed only)
    set_seed(training_args.seed)
    model = build_model(model_args, label_names)
    check_checkpoint_matches(checkpoint, model.config)
    if run_args.fast_dropout:
        replace_dropout_modules(model)
    processor = build_image_processor(model_args, model.config, data_args.normalize)
    logger.info(
        "Model: %s parameters; data: %s, %d train / %d eval images.",
        f"{model.num_parameters():,}",
        description,
        len(train_dataset),
        len(eval_dataset),
    )
    run_info = describe_run(training_args, run_args, data_args, model, checkpoint, global_batch)
    run_info.update(dataset=description, train_samples=len(train_dataset), eval_samples=len(eval_dataset))
    run_info["push_repo_id"] = push_repo_id
    train_dataset, eval_dataset = prepare_datasets(train_dataset, eval_dataset, processor, data_args)

    # Initialize our trainer
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=default_data_collator,
        processing_class=processor,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=logits_to_predictions,
        callbacks=[EpochSummaryCallback(global_batch)],
    )
    if run_args.ema_decay is not None:
        trainer.add_callback(EMACallback(run_args.ema_decay, resume_from=checkpoint))
    return trainer, train_and_evaluate(trainer, checkpoint, run_info)


def describe_run(training_args, run_args, data_args, model, checkpoint: str | None, global_batch: int) -> dict:
    """The run's record for `run_info.json`, which the model card reads."""
    if training_args.device.type == "cuda":
        hardware = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(training_args.device)}"
    else:
        cpu = platform.processor() or platform.machine()
        hardware = f"CPU ({cpu_isa()}, {cpu}), {cpu_count()} CPUs, {torch.get_num_threads()} torch threads per process"
    return {
        "recipe": run_args.recipe,
        "command": redact_hub_token(shlex.join([Path(sys.executable).name, *sys.argv])),
        "hardware": hardware,
        "cpu_isa": cpu_isa(),
        "seed": training_args.seed,
        "num_processes": training_args.world_size,
        "global_batch_size": global_batch,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "dataset_id": data.hub_dataset_id(data_args),
        "augmentation": data_args.augmentation,
        "eval_split": "validation" if data_args.validation_size is not None else "test",
        "num_parameters": model.num_parameters(),
        "mixed_precision": "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "no",
        "torch_compile": training_args.torch_compile,
        "fast_dropout": run_args.fast_dropout,
        "ema_decay": run_args.ema_decay,
        "torch_threads_per_process": torch.get_num_threads(),
        "resumed_from": checkpoint,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "training_args": json.loads(training_args.to_json_string()),
    }


def keep_token_out_of_files(training_args: TrainingArguments) -> None:
    """Move --hub_token into the process environment, where huggingface_hub reads it, so that no file the Trainer
    writes (training_args.bin, checkpoints, the recorded arguments) holds it."""
    if training_args.hub_token:
        os.environ["HF_TOKEN"] = training_args.hub_token
        training_args.hub_token = None


def train_and_evaluate(trainer: Trainer, checkpoint: str | None, run_info: dict) -> dict[str, float]:
    """Train (resuming from `checkpoint`), save the final folder, evaluate, plot the curves, push if asked.
    `run_info.json` is written last, so a failed run never replaces the record of the last good one."""
    args = trainer.args

    # Training
    train_metrics = dict(trainer.train(resume_from_checkpoint=checkpoint).metrics)
    save_final_model(trainer)
    train_metrics["train_samples"] = run_info["train_samples"]
    trainer.log_metrics("train", train_metrics)
    trainer.save_metrics("train", train_metrics)
    trainer.save_state()

    # Evaluation
    eval_metrics = trainer.evaluate()
    eval_metrics["eval_samples"] = run_info["eval_samples"]
    trainer.log_metrics("eval", eval_metrics)
    trainer.save_metrics("eval", eval_metrics)

    if trainer.is_world_process_zero():
        from .evaluation import plot_training_curves

        run_info.update(
            train_runtime=train_metrics.get("train_runtime"), eval_accuracy=eval_metrics.get("eval_accuracy")
        )
        write_json_atomic(os.path.join(args.output_dir, "run_info.json"), run_info)
        curves = os.path.join(args.output_dir, "training_curves.png")
        plot_training_curves(trainer.state.log_history, curves, title=f"ViT (d2l), recipe {run_info['recipe']}")
    if run_info["push_repo_id"] and trainer.is_world_process_zero():
        result = push_to_hub(args.output_dir, run_info["push_repo_id"], private=bool(args.hub_private_repo))
        logger.info("Uploaded to %s", result["url"])
    return {**train_metrics, **eval_metrics}


def run(argv: list[str] | None = None) -> int:
    """Entry point of scripts/train.py, `vit-d2l-train` and `python -m hf_vit_d2l.training`: bad input gets one
    clear line and exit status 2, not a traceback."""
    try:
        trainer, _ = main(argv)
    except (TrainingSetupError, data.DataUnavailableError, data.IDXFormatError, HubPushError) as err:
        logger.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        if torch.distributed.is_initialized():  # every rank of a refused multi-process run stops
            torch.distributed.destroy_process_group()
        return 2
    leave_process_group(trainer)
    return 0


def leave_process_group(trainer: Trainer) -> None:
    """End a multi-process run so that every rank exits cleanly; a no-op in one process.

    gloo's worker threads alive at interpreter shutdown abort a rank now and then (pytorch#190489), so the group goes
    now. Destroying it joins the workers, and one still freeing its last tensors needs the GIL: torch's own handle
    releases the GIL before it destroys the group, the DDP wrapper's Reducer does not. So the wrapper goes first, and
    `destroy_process_group` drops the last reference.
    """
    if not torch.distributed.is_initialized():
        return
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.free_memory()  # the Accelerator's list of prepared models holds the wrapper too
    trainer.model_wrapped = trainer.model
    gc.collect()  # a reference cycle must not keep the wrapper, and its Reducer, past destroy_process_group
    trainer.accelerator.end_training()  # destroy_process_group: joins gloo's threads with the GIL released


__all__ = [
    "ModelArguments",
    "RunArguments",
    "TrainingSetupError",
    "leave_process_group",
    "main",
    "parse_args",
    "run",
]


if __name__ == "__main__":
    sys.exit(run())
