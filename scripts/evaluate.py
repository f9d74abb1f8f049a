#!/usr/bin/env python
"""Evaluate a saved model (a folder from scripts/train.py, or a Hub id) on the Fashion-MNIST test split.

    python scripts/evaluate.py --model_name_or_path outputs/vit_d2l_fashion_mnist
    python scripts/evaluate.py --model_name_or_path USER/vit-d2l-fashion-mnist --output_dir eval/hub-model
    python scripts/evaluate.py --model_name_or_path outputs/vit_d2l_fashion_mnist --test_time_flip true

Writes `confusion_matrix.png` and `eval_results.json` (accuracy, loss, num_samples, per_class_accuracy,
confusion_matrix, labels, inverted_accuracy) into --output_dir (default: the model folder), where the model card
reads them. The data flags are train.py's (--dataset_name, --data_dir, --max_eval_samples, --validation_size, ...):
evaluate on the split training held out.
"""

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Python puts this script's folder first on sys.path, where this file would shadow the `evaluate` library.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

try:
    import hf_vit_d2l  # noqa: F401
except ImportError:  # run from a clone without `pip install -e .`
    sys.path.insert(0, str(_HERE.parent))

from hf_vit_d2l.data import DataArguments, DataUnavailableError, ImageClassificationCollator, load_splits  # noqa: E402
from hf_vit_d2l.evaluation import (  # noqa: E402
    ModelLoadError,
    load_model_and_processor,
    looks_like_local_path,
    plot_confusion_matrix,
)
from hf_vit_d2l.utils import write_json_atomic  # noqa: E402

logger = logging.getLogger(__name__)


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
        default=False, metadata={"help": "Run the code files stored with the model instead of the installed package."}
    )
    test_time_flip: bool | None = field(
        default=None,
        metadata={"help": "Override config.test_time_flip (average with the mirror image's logits). Default: saved."},
    )

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {self.batch_size}.")
        if self.output_dir is None:
            if looks_like_local_path(self.model_name_or_path) and not os.path.isdir(self.model_name_or_path):
                raise ValueError(f"{self.model_name_or_path}: no such folder. Pass a model folder or a Hub id.")
            if not os.path.isdir(self.model_name_or_path):
                raise ValueError(
                    f"{self.model_name_or_path} is not a local folder; pass --output_dir for the results."
                )
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
    """Accuracy, loss, per-class accuracy and confusion matrix of a saved model on the evaluation split.

    `data_args` is `hf_vit_d2l.data.DataArguments` (the training data flags). Writes `confusion_matrix.png` and then
    `eval_results.json` into `eval_args.output_dir`.
    """
    device = eval_args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = load_model_and_processor(eval_args.model_name_or_path, eval_args.trust_remote_code, device)
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
        "accuracy": float((predictions == references).mean()),
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
    os.makedirs(eval_args.output_dir, exist_ok=True)
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
