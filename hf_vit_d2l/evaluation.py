"""Evaluating a saved model, and the strict loading every command uses: one `ModelLoadError` line per broken folder.

    python -m hf_vit_d2l.evaluation --model_name_or_path runs/quick
    python -m hf_vit_d2l.evaluation --model_name_or_path USER/vit-d2l-fashion-mnist --output_dir eval/hub-model
    python -m hf_vit_d2l.evaluation --model_name_or_path runs/quick --test_time_flip true

It writes `confusion_matrix.png` and `eval_results.json` into --output_dir (default: the model folder), where the model
card reads them. The data flags are train.py's (--dataset_name, --data_dir, --validation_size ...): evaluate on the
split training held out.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import transformers
from huggingface_hub.errors import StrictDataclassError
from transformers import (
    CONFIG_MAPPING,
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING,
    AutoImageProcessor,
    AutoModelForImageClassification,
    HfArgumentParser,
    ImageProcessingMixin,
    PreTrainedConfig,
)
from transformers.dynamic_module_utils import get_class_from_dynamic_module

from .data import DataArguments, DataUnavailableError, ImageClassificationCollator, load_splits
from .utils import check_writable_folder, unsafe_pickle_message, write_json_atomic

logger = logging.getLogger(__name__)
LAYER_NUMBER = re.compile(r"\.\d+(?=\.|$)")  # encoder.layer.3.mlp... -> encoder.layer.N.mlp...


class ModelLoadError(OSError):
    """A model folder or Hub id that cannot be loaded; the message names the file or path and what to do."""


# ------------------------------------------------------------------------------------------------------------- Loading


def _first_line(error: BaseException) -> str:
    """The error's first line, with the next one when the first only announces it (ends with a colon)."""
    lines = [line.strip() for line in str(error).strip().splitlines()] or [type(error).__name__]
    return " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]


def read_json(path: str, error: type[Exception] = ModelLoadError) -> dict[str, Any]:
    """The JSON object in `path`, `{}` when there is no such file, `error` naming the file when it is not JSON."""
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"{path} is not valid JSON ({err}). Save it again, or re-run the step that writes it.") from None
    if not isinstance(data, dict):
        raise error(f"{path} holds a JSON {type(data).__name__}, not an object. Save it again.")
    return data


def count_parameters(folder: str) -> int:
    """Parameters of the saved weights, read from the safetensors headers (no tensor is loaded)."""
    from safetensors import safe_open

    total = 0
    for name in sorted(n for n in os.listdir(folder) if n.startswith("model") and n.endswith(".safetensors")):
        try:
            with safe_open(os.path.join(folder, name), framework="np") as f:
                total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())  # noqa: SIM118
        except Exception as err:  # safetensors' own error (not an OSError) names no file
            raise ModelLoadError(
                f"{os.path.join(folder, name)} is damaged ({_first_line(err)}); it was cut short or overwritten. "
                "Copy the file again or save the model again."
            ) from None
    return total


def check_model_folder(folder: str, trust_remote_code: bool = False) -> dict[str, Any]:
    """Raise `ModelLoadError` unless `folder` holds a loadable model (config, weight headers, image processor config);
    return its config.json as a dict. A missing weight file is left to transformers' own message, which names it."""
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise ModelLoadError(
            f"{folder} has no config.json, so it is not a saved model folder. Pass a folder written by "
            "save_pretrained (the output folder of scripts/train.py) or a Hub id USER/NAME."
        )
    config = read_json(config_path)
    check_model_config(config, config_path, trust_remote_code)
    count_parameters(folder)
    if not os.path.isfile(os.path.join(folder, "preprocessor_config.json")):
        raise ModelLoadError(
            f"{folder} has no preprocessor_config.json (the image processor). Save one next to the weights, e.g. "
            "ViTD2LImageProcessor(size={'height': H, 'width': W}).save_pretrained(folder)."
        )
    return config


def check_model_config(config: dict[str, Any], where: str, trust_remote_code: bool = False) -> None:
    """Refuse a config.json (`where` names it) whose model_type no image classifier loads from: unknown, not the
    saving class's, or without an image-classification model. With `trust_remote_code`, its auto_map may define it."""
    model_type = config.get("model_type")
    own_code = trust_remote_code and "AutoModelForImageClassification" in (config.get("auto_map") or {})
    if model_type not in CONFIG_MAPPING and not own_code:
        raise ModelLoadError(
            f"{where} has model_type {model_type!r}, which is not 'vit_d2l' (this package's models) nor a "
            "model type transformers knows. Fix model_type, or pass --trust_remote_code if the folder brings its "
            "own code (an auto_map in config.json)."
        )
    check_model_type(config, where)
    if not own_code and CONFIG_MAPPING[model_type] not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING:
        raise ModelLoadError(
            f"{where} has model_type {model_type!r}, which has no image-classification model; expected "
            "'vit_d2l' (this package's models) or another image-classification type of transformers (such as "
            "'vit'). Set model_type to the type the weights were saved with."
        )


def architecture_model_type(name: str) -> str | None:
    """The model_type of the model class called `name` (this package's or transformers'), None when unknown."""
    from . import modeling_vit_d2l

    try:
        cls = getattr(modeling_vit_d2l, name, None) or getattr(transformers, name, None)
    except Exception:  # transformers imports the class's module lazily; a missing dependency fails there
        cls = None
    return getattr(getattr(cls, "config_class", None), "model_type", None)


def check_model_type(config: dict[str, Any], where: str) -> None:
    """Refuse a model_type that is not that of the classes its `architectures` name (which saved the weights):
    transformers would build another model and fill it with random weights, or ask for remote code."""
    model_type = config.get("model_type")
    architectures = [name for name in config.get("architectures") or [] if isinstance(name, str)]
    saved_by = {architecture_model_type(name) for name in architectures} - {None}
    if model_type and saved_by and model_type not in saved_by:
        expected = " or ".join(repr(t) for t in sorted(saved_by))
        raise ModelLoadError(
            f"{where} has model_type {model_type!r}, but its architectures {architectures} are {expected} models, "
            f"which saved the weights. Set model_type to {expected}."
        )


def weights_name(path: str) -> str:
    """The weight file that a refusal names: the folder's, in `from_pretrained`'s order, or the Hub id's weights."""
    names = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    found = [os.path.join(path, name) for name in names if os.path.isfile(os.path.join(path, name))]
    return found[0] if found else f"the weights of {path}"


def check_loading_info(model, info: dict[str, Any], weights: str, ignore_mismatched_sizes: bool = False) -> None:
    """Refuse weights that leave part of `model` unloaded, have other shapes, or hold more of its layers than
    config.json describes; warn about other tensors. `info` is `from_pretrained(..., output_loading_info=True)`'s.
    With `ignore_mismatched_sizes` the classifier may be missing or of another shape: it stays newly initialised."""
    name = type(model).__name__
    expected = model.state_dict()

    def in_head(key: str) -> bool:
        return not key.startswith(f"{model.base_model_prefix}.")

    # The base model's keys first: they say more about what differs than the classifier's.
    missing = sorted(info["missing_keys"], key=lambda key: (in_head(key), key))
    mismatched = sorted(info["mismatched_keys"], key=lambda entry: (in_head(entry[0]), entry[0]))
    new_head = []
    if ignore_mismatched_sizes:
        new_head = [key for key in missing + [key for key, *_ in mismatched] if in_head(key)]
        missing = [key for key in missing if not in_head(key)]
        mismatched = [entry for entry in mismatched if not in_head(entry[0])]
    unexpected = sorted(info["unexpected_keys"])
    layouts = {LAYER_NUMBER.sub(".N", key) for key in expected}
    misplaced = [key for key in unexpected if LAYER_NUMBER.sub(".N", key) in layouts]
    if missing and all(in_head(key) for key in missing):
        raise ModelLoadError(
            f"{weights} has no classifier ({', '.join(missing)}) for {name}: its predictions would be random. Pass "
            "the folder of a trained classification model."
        )
    if missing:
        raise ModelLoadError(
            f"{weights} lacks {len(missing)} of the {len(expected)} tensors of the {name} that config.json "
            f"describes (first: {missing[0]}): the file is incomplete, or config.json describes a bigger model "
            "(compare num_hidden_layers and the other sizes with the file's). Save the model again or fix config.json."
        )
    if mismatched:
        key, saved, built = mismatched[0]
        what = "config.json's num_labels and id2label" if in_head(key) else "config.json's sizes"
        raise ModelLoadError(
            f"{weights} does not fit config.json: {len(mismatched)} tensor(s) differ in shape (first: {key} is "
            f"({', '.join(map(str, saved))}) in the file, ({', '.join(map(str, built))}) in the {name} that "
            f"config.json describes). Fix {what} to match the weights."
        )
    if misplaced:
        raise ModelLoadError(
            f"{weights} holds {len(misplaced)} tensor(s) of {name} layers that config.json does not describe (first: "
            f"{misplaced[0]}): config.json describes a smaller model (compare num_hidden_layers with the file's)."
        )
    if unexpected:
        logger.warning(
            "%s holds %d tensor(s) that %s does not use (first: %s); they are ignored.",
            weights,
            len(unexpected),
            name,
            unexpected[0],
        )
    if new_head:
        logger.warning(
            "%s: the classifier (%s) does not fit config.json and is newly initialised (ignore_mismatched_sizes); "
            "train it before use.",
            weights,
            ", ".join(new_head),
        )


def load_model(
    path: str | os.PathLike,
    trust_remote_code: bool = False,
    ignore_mismatched_sizes: bool = False,
    model_class=AutoModelForImageClassification,
    **kwargs,
):
    """`model_class.from_pretrained(path, ...)` that refuses, in one `ModelLoadError` naming the file, what
    transformers only reports (`check_loading_info`, `check_model_type`). `kwargs` go to `from_pretrained`."""
    path = os.fspath(path)
    config_file = os.path.join(path, "config.json") if os.path.isdir(path) else f"{path}'s config.json"
    # The checks below replace transformers' loading report, and one line is all a refusal prints.
    verbosity = transformers.logging.get_verbosity()
    progress_bar = transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        # Mismatched shapes come back in the loading info (instead of a RuntimeError) and are refused below.
        model, info = model_class.from_pretrained(
            path,
            trust_remote_code=trust_remote_code,
            ignore_mismatched_sizes=True,
            output_loading_info=True,
            **kwargs,
        )
    except StrictDataclassError as err:  # a config value out of range, or sizes that contradict each other
        raise ModelLoadError(f"{config_file} is not a valid config: {_first_line(err)}") from None
    except pickle.UnpicklingError:  # torch's weights_only loader refused a pytorch_model.bin
        raise ModelLoadError(unsafe_pickle_message(weights_name(path))) from None
    except (OSError, ValueError, KeyError, EOFError, RuntimeError, TypeError) as err:
        raise load_error(path, err) from None
    finally:
        transformers.logging.set_verbosity(verbosity)
        if progress_bar:
            transformers.logging.enable_progress_bar()
    check_model_type(model.config.to_dict(), config_file)
    check_loading_info(model, info, weights_name(path), ignore_mismatched_sizes)
    return model


def load_error(path: str, error: BaseException) -> ModelLoadError:
    """`ModelLoadError` for what transformers raised while loading `path`: its first line, saying where it looked."""
    what = f"the folder {path}" if os.path.isdir(path) else f"{path} (not a local folder, so as a Hub id)"
    return ModelLoadError(f"Could not load {what}: {_first_line(error)}")


def stored_code_class(path: str, auto_map: dict | None, auto_class, revision: str):
    """The class that `auto_map` names for `auto_class`, imported from the code stored with the model, else
    `auto_class`. (`auto_class` itself would prefer the classes this package registered over the stored code.)"""
    reference = (auto_map or {}).get(auto_class.__name__)
    if not isinstance(reference, str):  # none, or several per backend: then the Auto class chooses
        return auto_class
    try:
        return get_class_from_dynamic_module(reference, path, revision=revision)
    except (OSError, ValueError, ImportError, AttributeError) as err:
        raise ModelLoadError(
            f"Could not import {reference} from the code stored with {path}: {_first_line(err)}"
        ) from None


def looks_like_local_path(path: str) -> bool:
    """A path rather than a Hub id: explicit prefixes, more than one slash, or a parent folder that exists."""
    parent = os.path.dirname(path)
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or bool(parent and os.path.isdir(parent))


def load_model_and_processor(
    path: str | os.PathLike,
    trust_remote_code: bool = False,
    device: str | None = None,
    ignore_mismatched_sizes: bool = False,
    revision: str = "main",
):
    """(model in eval mode, image processor) from a local folder or a Hub id at `revision`, loaded strictly
    (`load_model`), or a `ModelLoadError` saying why not. With `trust_remote_code` the code files stored with the
    model run instead of the installed package, for this package's models too."""
    path = os.fspath(path)
    if os.path.isdir(path):
        config = check_model_folder(path, trust_remote_code)
    elif os.path.exists(path):
        raise ModelLoadError(f"{path} is a file; pass the model folder (with config.json) or a Hub id USER/NAME.")
    elif looks_like_local_path(path):
        raise ModelLoadError(
            f"{path}: no such folder. Pass a model folder written by save_pretrained (the output folder of "
            "scripts/train.py) or a Hub id USER/NAME."
        )
    else:
        try:
            config = PreTrainedConfig.get_config_dict(path, revision=revision)[0]
        except (OSError, ValueError) as err:
            raise load_error(path, err) from None
        check_model_config(config, f"{path}'s config.json", trust_remote_code)
    model_class, processor_class = AutoModelForImageClassification, AutoImageProcessor
    if trust_remote_code:
        try:
            processor_config = ImageProcessingMixin.get_image_processor_dict(path, revision=revision)[0]
        except (OSError, ValueError) as err:
            raise load_error(path, err) from None
        model_class = stored_code_class(path, config.get("auto_map"), model_class, revision)
        processor_class = stored_code_class(path, processor_config.get("auto_map"), processor_class, revision)
    model = load_model(path, trust_remote_code, ignore_mismatched_sizes, model_class, revision=revision)
    options = {"revision": revision}
    if processor_class is AutoImageProcessor:
        options.update(trust_remote_code=trust_remote_code, backend="pil")
    try:
        processor = processor_class.from_pretrained(path, **options)
    except (OSError, ValueError, KeyError, EOFError) as err:
        raise load_error(path, err) from None
    return model.to(device or "cpu").eval(), processor


# ------------------------------------- Plots (matplotlib's object API: no pyplot, no display, no global backend state)


def plot_training_curves(log_history: Sequence[dict], path: str | os.PathLike, title: str | None = None) -> str:
    """Draw train loss, eval loss and eval accuracy against epochs on one axis, as d2l's `ProgressBoard` does.
    `log_history` is `trainer_state.json`'s; its final summary (`train_loss`, no `loss`) is not a point."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    for key, name, style in (
        ("loss", "train_loss", "-o"),
        ("eval_loss", "eval_loss", "--s"),
        ("eval_accuracy", "eval_accuracy", "-.^"),
    ):
        points = [(e["epoch"], e[key]) for e in log_history if key in e and "epoch" in e]
        if points:
            ax.plot(*zip(*points, strict=True), style, markersize=3, label=name)
    ax.set_xlabel("epoch")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend()
    if title:
        ax.set_title(title)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return os.fspath(path)


def plot_confusion_matrix(
    matrix: np.ndarray, labels: Sequence[str], path: str | os.PathLike, title: str | None = None
) -> str:
    """A confusion matrix (rows: true class, columns: predicted class) with counts and class names."""
    from matplotlib.figure import Figure

    matrix, n = np.asarray(matrix), len(labels)
    if matrix.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {matrix.shape} does not match {n} labels.")
    size = max(5.0, 0.6 * n + 2)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), labels=list(labels), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(labels))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:  # counts stay readable up to about 30 classes
        for (i, j), count in np.ndenumerate(matrix):
            color = "white" if count > matrix.max() / 2 else "black"
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color=color)
    if title:
        ax.set_title(title)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return os.fspath(path)


@dataclass
class EvaluateArguments:
    """`scripts/run_evaluation.py`: a saved folder or Hub id, evaluated on a test split."""

    model_name_or_path: str = field(metadata={"help": "A folder written by scripts/train.py, or a Hub id."})
    output_dir: str | None = field(default=None, metadata={"help": "Where the results go. Default: the model folder."})
    revision: str = field(default="main", metadata={"help": "A Hub model's branch, tag or commit sha."})
    batch_size: int = field(default=256, metadata={"help": "Images per forward pass."})
    device: str | None = field(default=None, metadata={"help": "'cpu', 'cuda', 'cuda:1'... Default: cuda if any."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run the code files stored with the model."})
    test_time_flip: bool | None = field(
        default=None,
        metadata={"help": "Override config.test_time_flip (average with the mirror image's logits). Default: saved."},
    )

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {self.batch_size}.")
        if self.output_dir is None and not os.path.isdir(self.model_name_or_path):
            if looks_like_local_path(self.model_name_or_path):
                raise ValueError(f"{self.model_name_or_path}: no such folder. Pass a model folder or a Hub id.")
            raise ValueError(f"{self.model_name_or_path} is not a local folder; pass --output_dir for the results.")
        if self.output_dir is None:
            self.output_dir = self.model_name_or_path


def label_mapping(dataset_names: list[str], model_id2label: dict) -> np.ndarray:
    """Dataset label index -> model label index: by name when both list the same classes, else by position."""
    model_names = [model_id2label[i] for i in range(len(model_id2label))]
    if sorted(dataset_names) == sorted(model_names):
        return np.array([model_names.index(name) for name in dataset_names])
    if len(dataset_names) != len(model_names):
        raise ValueError(
            f"The dataset has {len(dataset_names)} classes but the model predicts {len(model_names)}; evaluate it on "
            "the dataset it was trained for."
        )
    logger.warning("Dataset classes %s differ from the model's %s; matching by position.", dataset_names, model_names)
    return np.arange(len(dataset_names))


@torch.no_grad()
def evaluate_saved_model(eval_args: EvaluateArguments, data_args) -> dict[str, Any]:
    """Accuracy, loss, per-class accuracy and confusion matrix of a saved model on the evaluation split of
    `data_args` (`DataArguments`, the training data flags), written into `eval_args.output_dir`."""
    from .accuracy_metric import load_accuracy  # evaluate loads here, not for every command that loads a model

    check_writable_folder(eval_args.output_dir, "--output_dir")  # before any work, not after it
    device = eval_args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = load_model_and_processor(
        eval_args.model_name_or_path, eval_args.trust_remote_code, device, revision=eval_args.revision
    )
    if eval_args.test_time_flip is not None:
        if not hasattr(model.config, "test_time_flip"):
            raise ValueError(f"--test_time_flip needs a vit_d2l model, not a {model.config.model_type!r} one.")
        model.config.test_time_flip = eval_args.test_time_flip
    _, dataset, label_names, description = load_splits(data_args, seed=42)
    mapping = label_mapping(label_names, model.config.id2label)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=eval_args.batch_size, collate_fn=ImageClassificationCollator(processor)
    )
    # Inverted inputs (dark item on white, as drawings and product photos are): 1 - pixel, in the processor's scale.
    mean, std = (np.mean(processor.image_mean), np.mean(processor.image_std)) if processor.do_normalize else (0, 1)
    total_loss, predictions, references, inverted_hits = 0.0, [], [], 0
    start = time.perf_counter()
    for batch in loader:
        labels = torch.from_numpy(mapping[batch["labels"].numpy()]).to(device)
        pixel_values = batch["pixel_values"].to(device)
        logits = model(pixel_values=pixel_values).logits.float()
        total_loss += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        predictions.append(logits.argmax(-1).cpu().numpy())
        references.append(labels.cpu().numpy())
        inverted = (1 - 2 * mean - pixel_values * std) / std
        inverted_hits += int((model(pixel_values=inverted).logits.argmax(-1) == labels).sum())
    elapsed = time.perf_counter() - start
    predictions, references = np.concatenate(predictions), np.concatenate(references)
    matrix = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(matrix, (references, predictions), 1)
    support = matrix.sum(axis=1)
    results = {
        "accuracy": load_accuracy().compute(predictions=predictions, references=references)["accuracy"],
        "inverted_accuracy": inverted_hits / len(references),
        "loss": total_loss / len(references),
        "num_samples": len(references),
        "per_class_accuracy": {
            n: float(matrix[i, i] / support[i]) if support[i] else None for i, n in enumerate(names)
        },
        "confusion_matrix": matrix.tolist(),
        "labels": names,
        "model": eval_args.model_name_or_path,
        "dataset": description,
        "eval_split": "validation" if data_args.validation_size else "test",  # the card reports test results only
        "device": str(device),
        "test_time_flip": bool(getattr(model.config, "test_time_flip", False)),
        "samples_per_second": 2 * len(references) / elapsed,  # each image also inverted
    }
    title = f"accuracy {results['accuracy']:.2%} on {len(references):,} images"
    plot_confusion_matrix(matrix, names, os.path.join(eval_args.output_dir, "confusion_matrix.png"), title=title)
    write_json_atomic(os.path.join(eval_args.output_dir, "eval_results.json"), results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser((EvaluateArguments, DataArguments))
    try:
        eval_args, data_args = parser.parse_args_into_dataclasses(args=argv)
        results = evaluate_saved_model(eval_args, data_args)
    except (ModelLoadError, DataUnavailableError, ValueError) as err:  # flags, model or data: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    width = max(len(name) for name in results["labels"])
    print(f"accuracy {results['accuracy']:.4f}  loss {results['loss']:.4f}  ({results['num_samples']} images)")
    for name, value in results["per_class_accuracy"].items():
        print(f"  {name:<{width}}  {'n/a' if value is None else f'{value:.4f}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
