"""Accuracy: the fraction of predictions equal to the references.

A local copy of the Hub's `evaluate-metric/accuracy` module (same name, inputs and output), so that
`evaluate.load("/path/to/accuracy_metric.py")` works without network access. `hf_vit_d2l.training` loads the Hub
module when the Hub is reachable and this file otherwise. Keep one import per line: evaluate's import scanner reads
this file's imports to decide what to install.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Accuracy is the proportion of correct predictions among the total number of cases processed:
Accuracy = (TP + TN) / (TP + TN + FP + FN).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels.
    references (`list` of `int`): ground truth labels.
    normalize (`bool`, defaults to `True`): if `False`, return the number of correct predictions instead.
    sample_weight (`list` of `float`, optional): sample weights.

Returns:
    accuracy (`float` or `int`): in [0, 1] when `normalize=True`, else a count.

Examples:
    >>> accuracy_metric = evaluate.load("hf_vit_d2l/accuracy_metric.py")
    >>> accuracy_metric.compute(references=[0, 1, 2, 0, 1, 2], predictions=[0, 1, 1, 2, 1, 0])
    {'accuracy': 0.5}
"""

_CITATION = """
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and Varoquaux, G. and Gramfort, A. and others},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int32"),
                    "references": datasets.Value("int32"),
                }
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.accuracy_score.html"],
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        if predictions.shape != references.shape:
            raise ValueError(
                f"predictions and references must have the same length, got {predictions.shape[0]} and "
                f"{references.shape[0]}."
            )
        correct = (predictions == references).astype(np.float64)
        if sample_weight is not None:
            correct = correct * np.asarray(sample_weight, dtype=np.float64)
        if not normalize:
            total = correct.sum()
            return {"accuracy": int(total) if sample_weight is None else float(total)}
        denominator = len(correct) if sample_weight is None else float(np.sum(sample_weight))
        return {"accuracy": float(correct.sum() / denominator) if denominator else 0.0}
