"""Plots of a training run: the book's live plot (train loss, eval loss, eval accuracy per epoch) and a confusion
matrix. matplotlib's Agg backend is used, so no display is needed; files are written atomically."""

import os
import tempfile
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402


def _save_figure(fig, path: str | os.PathLike) -> str:
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".png", dir=directory)
    os.close(fd)
    try:
        fig.savefig(staging, dpi=120, bbox_inches="tight")
        os.replace(staging, path)
    finally:
        plt.close(fig)
        if os.path.exists(staging):
            os.remove(staging)
    return path


def curves_from_log_history(log_history: Sequence[dict]) -> dict[str, list[tuple[float, float]]]:
    """`log_history` of `trainer_state.json` -> {"train_loss": [(epoch, value)], "eval_loss": ..., ...}.

    Train loss entries are the Trainer's logged running means (one per epoch with `logging_strategy="epoch"`);
    the final summary entry (`train_loss` over the whole run) is left out.
    """
    curves: dict[str, list[tuple[float, float]]] = {"train_loss": [], "eval_loss": [], "eval_accuracy": []}
    for entry in log_history:
        epoch = entry.get("epoch")
        if epoch is None:
            continue
        if "loss" in entry:
            curves["train_loss"].append((float(epoch), float(entry["loss"])))
        if "eval_loss" in entry:
            curves["eval_loss"].append((float(epoch), float(entry["eval_loss"])))
        if "eval_accuracy" in entry:
            curves["eval_accuracy"].append((float(epoch), float(entry["eval_accuracy"])))
    return curves


def plot_training_curves(log_history: Sequence[dict], path: str | os.PathLike, title: str | None = None) -> str:
    """Draw train loss, eval loss and eval accuracy against epochs on one axis, as d2l's `ProgressBoard` does."""
    curves = curves_from_log_history(log_history)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    styles = {"train_loss": ("-", "o"), "eval_loss": ("--", "s"), "eval_accuracy": ("-.", "^")}
    for name, points in curves.items():
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        line, marker = styles[name]
        ax.plot(xs, ys, linestyle=line, marker=marker, markersize=3, label=name)
    ax.set_xlabel("epoch")
    ax.grid(True, alpha=0.3)
    if any(curves.values()):
        ax.legend()
    if title:
        ax.set_title(title)
    return _save_figure(fig, path)


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]] | np.ndarray,
    labels: Sequence[str],
    path: str | os.PathLike,
    title: str | None = None,
) -> str:
    """A confusion matrix (rows: true class, columns: predicted class) with counts and class names."""
    matrix = np.asarray(matrix)
    n = len(labels)
    if matrix.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {matrix.shape} does not match {n} labels.")
    size = max(5.0, 0.6 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), labels=list(labels), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(labels))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    str(int(matrix[i, j])),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if matrix[i, j] > threshold else "black",
                )
    if title:
        ax.set_title(title)
    return _save_figure(fig, path)


__all__ = ["curves_from_log_history", "plot_confusion_matrix", "plot_training_curves"]
