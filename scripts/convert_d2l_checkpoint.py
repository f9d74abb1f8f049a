#!/usr/bin/env python
"""Convert a checkpoint of the book's own `ViT` module into a Hugging Face model folder.

Save the book model with `torch.save(model.state_dict(), "vit_d2l.pt")` (a dict holding it under "state_dict" or
"model" works too), then:

    python scripts/convert_d2l_checkpoint.py --checkpoint vit_d2l.pt --output_dir vit-d2l-hf
    python scripts/convert_d2l_checkpoint.py --checkpoint vit_d2l.pt --output_dir vit-d2l-hf --num_heads 4
    python scripts/convert_d2l_checkpoint.py --checkpoint vit_d2l.pt --output_dir vit-d2l-hf \\
        --config_overrides "emb_dropout=0.1,blk_dropout=0.1"
    python scripts/convert_d2l_checkpoint.py --checkpoint vit_d2l.pt --output_dir vit-stock --to_transformers

The first three write a `ViTD2LForImageClassification` folder (model.safetensors, config.json with a full auto_map,
the code files, preprocessor_config.json) that loads with `AutoModelForImageClassification.from_pretrained(folder,
trust_remote_code=True)`. `--to_transformers` writes stock `transformers.ViTForImageClassification` instead (no
remote code; see `hf_vit_d2l.to_transformers_vit` for what stock ViT cannot express in training).
The file is read with `torch.load(weights_only=True)`: pickled modules are refused.

The logic is `hf_vit_d2l.convert.main` (also `vit-d2l-convert` and `python -m hf_vit_d2l.convert`).
"""

import sys

from hf_vit_d2l.convert import main

if __name__ == "__main__":
    sys.exit(main())
