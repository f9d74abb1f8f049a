#!/usr/bin/env python
"""Evaluate a saved model (a folder from scripts/train.py, or a Hub id) on the Fashion-MNIST test split.

    python scripts/run_evaluation.py --model_name_or_path runs/quick
    python scripts/run_evaluation.py --model_name_or_path USER/vit-d2l-fashion-mnist --output_dir eval/hub-model

The logic is `hf_vit_d2l.evaluation.main` (also `vit-d2l-evaluate` and `python -m hf_vit_d2l.evaluation`).
"""

import sys

from hf_vit_d2l.evaluation import main

if __name__ == "__main__":
    sys.exit(main())
