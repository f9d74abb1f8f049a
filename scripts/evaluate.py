#!/usr/bin/env python
"""Evaluate a saved model (a folder from scripts/train.py, or a Hub id) on the Fashion-MNIST test split.

    python scripts/evaluate.py --model_name_or_path runs/book
    python scripts/evaluate.py --model_name_or_path user/vit-d2l-fashion-mnist --output_dir eval/hub-model
    python scripts/evaluate.py --model_name_or_path runs/book --data_dir /usr/share/datasets/fashion-mnist

Writes `eval_results.json` (accuracy, loss, num_samples, per_class_accuracy, confusion_matrix, labels) and
`confusion_matrix.png` into --output_dir (default: the model folder). The data flags are train.py's
(--data_source, --data_dir, --dataset_name, --image_column_name, --label_column_name, --max_eval_samples).
"""

import sys
from pathlib import Path

# Python puts this script's folder first on sys.path, where scripts/evaluate.py would shadow the `evaluate` library.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

try:
    import hf_vit_d2l  # noqa: F401
except ImportError:  # run from a clone without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_vit_d2l.training import evaluate_main  # noqa: E402  (after the sys.path fix)


def main() -> int:
    return evaluate_main()


if __name__ == "__main__":
    sys.exit(main())
