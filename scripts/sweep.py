#!/usr/bin/env python
"""One fast hyper-parameter trial of a small config on the Fashion-MNIST validation split (never the test split).

    python scripts/sweep.py --num_train_epochs 5 --learning_rate 1e-3
    python scripts/sweep.py --num_train_epochs 5 --config_overrides patch_size=4,hidden_size=64,intermediate_size=128 \
        --learning_rate 3e-3 --crop_padding 4 --json_out sweep.jsonl

A bare loop with the quick recipe's settings as defaults (hf_vit_d2l/sweep.py says how it differs from
`scripts/train.py --recipe quick --validation_size 5000`). Prints the validation accuracy after every epoch.
"""

import sys
from pathlib import Path

try:
    import hf_vit_d2l  # noqa: F401
except ImportError:  # run from a clone without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_vit_d2l.sweep import main  # noqa: E402  (after the sys.path fix)

if __name__ == "__main__":
    sys.exit(main())
