"""Accuracy as an `evaluate` metric script loaded by its path, because `evaluate.load("accuracy")` fetches unpinned
code from the Hub (and stalls offline). evaluate imports a copy of this file and its import scanner reads one import
per line, so keep each import on a line of its own.
"""

import functools
import os

import datasets
import evaluate
import numpy as np

_INPUTS = "predictions, references (`list` of `int`): predicted and true class indices, in the same order."


class Accuracy(evaluate.Metric):
    """Single-label accuracy, as the Hub's `evaluate-metric/accuracy` computes it without sample weights."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Accuracy: the fraction of predictions equal to their reference label.",
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
