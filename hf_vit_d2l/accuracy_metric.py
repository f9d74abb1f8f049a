"""Accuracy as an `evaluate` metric, shipped in the package and loaded by its path: never from the Hub.

`evaluate.load("accuracy")` fetches `evaluate-metric/accuracy` from the Hub: unpinned code, and a stall offline
(evaluate's pip package ships no metric). This file is a metric script of the same kind, for single-label
classification, and `load_accuracy()` loads it with `evaluate.load(path)`:

    load_accuracy().compute(predictions=[0, 1, 2, 2], references=[0, 1, 1, 2])  # {'accuracy': 0.75}

evaluate copies the script into `HF_MODULES_CACHE` and imports the copy. Its import scanner reads one import
per line, so keep each import on a line of its own.
"""

import functools
import os

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Accuracy: the fraction of predictions equal to their reference label."

_INPUTS = """
Args:
    predictions (`list` of `int`): predicted class indices.
    references (`list` of `int`): true class indices, in the same order.
Returns:
    accuracy (`float`): correct predictions / all predictions, in [0, 1].
"""


class Accuracy(evaluate.Metric):
    """Single-label accuracy, as the Hub's `evaluate-metric/accuracy` computes it without sample weights."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            format="numpy",
        )

    def _compute(self, predictions, references) -> dict[str, float]:
        return {"accuracy": float(np.mean(predictions == references))}


@functools.cache
def load_accuracy() -> evaluate.EvaluationModule:
    """This file's `Accuracy`, loaded by `evaluate.load` from its path (no network), kept in memory."""
    return evaluate.load(os.path.abspath(__file__), keep_in_memory=True)


__all__ = ["Accuracy", "load_accuracy"]
