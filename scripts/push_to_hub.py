#!/usr/bin/env python
"""Write the model card of a trained folder and push the folder to the Hugging Face Hub.

    # look first: write exactly the folder that would be uploaded (README.md = the generated card)
    python scripts/push_to_hub.py outputs/vit_d2l_fashion_mnist --repo_id USER/vit-d2l-fashion-mnist \\
        --dry_run /tmp/vit-d2l-upload

    # upload (needs `hf auth login` or HF_TOKEN); optionally the stock-transformers export to a second repository
    # and a Gradio Space running scripts/demo.py on the pushed commit
    python scripts/push_to_hub.py outputs/vit_d2l_fashion_mnist --repo_id USER/vit-d2l-fashion-mnist \\
        --also_stock_vit_repo USER/vit-d2l-fashion-mnist-stock-vit --space_repo_id USER/vit-d2l-demo

The folder is the output of scripts/train.py, evaluated with scripts/run_evaluation.py. It is only read: the card goes
into a staged copy. Before anything is uploaded, the script checks that the folder is complete and loadable
(weights, config with a full auto_map, the three code files, preprocessor config) and that a token exists and the
Hub answers; offline it stops at once with a clear message.

The logic is `hf_vit_d2l.hub.main` (also `vit-d2l-push` and `python -m hf_vit_d2l.hub`).
"""

import sys

from hf_vit_d2l.hub import main

if __name__ == "__main__":
    sys.exit(main())
