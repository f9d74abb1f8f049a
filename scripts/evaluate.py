#!/usr/bin/env python
"""Evaluate a saved model (a folder from scripts/train.py, or a Hub id) on the Fashion-MNIST test split.

    python scripts/evaluate.py --model_name_or_path outputs/vit_d2l_fashion_mnist
    python scripts/evaluate.py --model_name_or_path USER/vit-d2l-fashion-mnist --output_dir eval/hub-model
    python scripts/evaluate.py --model_name_or_path outputs/vit_d2l_fashion_mnist --test_time_flip true

Writes `confusion_matrix.png` and `eval_results.json` (accuracy, loss, num_samples, per_class_accuracy,
confusion_matrix, labels) into --output_dir (default: the model folder). The data flags are train.py's
(--dataset_name, --data_dir, --max_eval_samples, --validation_size, ...): evaluate on the split training held out.
"""

import sys
from pathlib import Path

# Python puts this script's folder first on sys.path, where this file would shadow the `evaluate` library.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from transformers import HfArgumentParser  # noqa: E402

try:
    import hf_vit_d2l  # noqa: F401
except ImportError:  # run from a clone without `pip install -e .`
    sys.path.insert(0, str(_HERE.parent))

from hf_vit_d2l.data import DataArguments, DataUnavailableError  # noqa: E402
from hf_vit_d2l.evaluation import EvaluateArguments, ModelLoadError, evaluate_saved_model  # noqa: E402


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
