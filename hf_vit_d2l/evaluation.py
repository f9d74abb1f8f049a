"""What evaluating a saved model needs: loading with clear errors, the weights' headers, and the plots.

`load_model_and_processor` is what every command-line entry point loads a model with, so that a broken folder gets
one `ModelLoadError` naming the file and what to do instead of a deep traceback. `scripts/evaluate.py` computes the
accuracy, per-class accuracy and confusion matrix of a saved folder with it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from transformers import CONFIG_MAPPING, AutoImageProcessor, AutoModelForImageClassification


class ModelLoadError(OSError):
    """A model folder or Hub id that cannot be loaded; the message names the file or path and what to do."""


# ------------------------------------------------------------------------------------------------------------- Loading


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


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
    """Parameters of the saved weights, read from the safetensors headers (no tensor is loaded).

    A damaged file gets a `ModelLoadError` naming it: transformers' own error (from Rust) names no file.
    """
    from safetensors import safe_open

    total = 0
    for name in sorted(n for n in os.listdir(folder) if n.startswith("model") and n.endswith(".safetensors")):
        try:
            with safe_open(os.path.join(folder, name), framework="np") as f:
                total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())  # noqa: SIM118
        except Exception as err:  # safetensors raises its own SafetensorError (not an OSError) for a bad header
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
    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING and not (trust_remote_code and config.get("auto_map")):
        raise ModelLoadError(
            f"{config_path} has model_type {model_type!r}, which is not 'vit_d2l' (this package's models) nor a "
            "model type transformers knows. Fix model_type, or pass --trust_remote_code if the folder brings its "
            "own code (an auto_map in config.json)."
        )
    count_parameters(folder)
    if not os.path.isfile(os.path.join(folder, "preprocessor_config.json")):
        raise ModelLoadError(
            f"{folder} has no preprocessor_config.json (the image processor). Save one next to the weights, e.g. "
            "ViTD2LImageProcessor(size={'height': H, 'width': W}).save_pretrained(folder)."
        )
    return config


def looks_like_local_path(path: str) -> bool:
    """A path rather than a Hub id: explicit prefixes, more than one slash, or a parent folder that exists."""
    parent = os.path.dirname(path)
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or bool(parent and os.path.isdir(parent))


def load_model_and_processor(path: str | os.PathLike, trust_remote_code: bool = False, device: str | None = None):
    """(model in eval mode, image processor) from a local folder or a Hub id, or a `ModelLoadError` saying why not.

    With `trust_remote_code=True` the code files stored with the model run instead of the installed package; pin
    the revision of a Hub model when you do (`from_pretrained(..., trust_remote_code=True, revision=COMMIT)`).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        check_model_folder(path, trust_remote_code)
    elif os.path.exists(path):
        raise ModelLoadError(f"{path} is a file; pass the model folder (with config.json) or a Hub id USER/NAME.")
    elif looks_like_local_path(path):
        raise ModelLoadError(
            f"{path}: no such folder. Pass a model folder written by save_pretrained (the output folder of "
            "scripts/train.py) or a Hub id USER/NAME."
        )
    try:
        model = AutoModelForImageClassification.from_pretrained(path, trust_remote_code=trust_remote_code)
        processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=trust_remote_code, backend="pil")
    except (OSError, ValueError, KeyError, EOFError) as err:
        what = f"the folder {path}" if os.path.isdir(path) else f"{path} (not a local folder, so as a Hub id)"
        raise ModelLoadError(f"Could not load {what}: {_first_line(err)}") from None
    return model.to(device or "cpu").eval(), processor


# ------------------------------------- Plots (matplotlib's object API: no pyplot, no display, no global backend state)


def plot_training_curves(log_history: Sequence[dict], path: str | os.PathLike, title: str | None = None) -> str:
    """Draw train loss, eval loss and eval accuracy against epochs on one axis, as d2l's `ProgressBoard` does.

    `log_history` is `trainer_state.json`'s: train loss entries are the Trainer's logged running means; the final
    summary entry (`train_loss` over the whole run) has no `loss` key and is left out.
    """
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


__all__ = [
    "ModelLoadError",
    "check_model_folder",
    "count_parameters",
    "load_model_and_processor",
    "looks_like_local_path",
    "plot_confusion_matrix",
    "plot_training_curves",
]
