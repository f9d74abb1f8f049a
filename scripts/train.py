#!/usr/bin/env python
"""Train the book's ViT on Fashion-MNIST with the Hugging Face Trainer (logic in `hf_vit_d2l.training`).

With only --output_dir it reproduces the book's recipe (SGD lr 0.1, constant LR, batch 128, 10 epochs, no gradient
clipping, the 96 px config, evaluation on the test split after every epoch); --recipe improved / quick pick the
stronger recipes (hf_vit_d2l/recipes/*.json, or a JSON file of your own). Any flag you give wins over the recipe.
The same script runs under `accelerate launch`; without a clone, `vit-d2l-train` or
`accelerate launch -m hf_vit_d2l.training` run the same code:

    # one CPU or one GPU (plain python works too)
    python scripts/train.py --output_dir runs/book
    accelerate launch --config_file configs/accelerate_single.yaml scripts/train.py --output_dir runs/book

    # a laptop CPU, about 10 minutes of training
    python scripts/train.py --recipe quick --output_dir runs/quick

    # N GPUs on one machine (DDP); the global batch stays 128 (128 / N per GPU)
    accelerate launch --config_file configs/accelerate_multi_gpu.yaml --num_processes 4 \
        scripts/train.py --output_dir runs/book-ddp

    # CPU DDP (gloo), 2 processes (on a machine without a GPU, --use_cpu is the default)
    accelerate launch --config_file configs/accelerate_cpu_ddp.yaml --num_processes 2 \
        scripts/train.py --output_dir runs/book-cpu-ddp

    # two machines with 8 GPUs each (run on every machine with its --machine_rank)
    accelerate launch --config_file configs/accelerate_multi_gpu.yaml --num_machines 2 --num_processes 16 \
        --machine_rank 0 --main_process_ip 10.0.0.1 --main_process_port 29500 \
        scripts/train.py --output_dir runs/book-2x8

    # bf16 mixed precision (GPU, or a CPU with native bf16: AVX512-BF16 / AMX; refused elsewhere)
    accelerate launch --config_file configs/accelerate_single.yaml --mixed_precision bf16 \
        scripts/train.py --bf16 --output_dir runs/book-bf16

    # FSDP (FULLY_SHARD, one ViTD2LLayer per unit), 2 GPUs
    accelerate launch --config_file configs/accelerate_fsdp.yaml --num_processes 2 \
        scripts/train.py --output_dir runs/book-fsdp

Global batch: the recipe's 128 images per optimizer step, split over the processes (per device = 128 / N, rounded
up when N does not divide 128) unless --per_device_train_batch_size is given, in which case the global batch is
per_device x N x --gradient_accumulation_steps. `run_info.json` records the batch actually used.

Always pass --config_file (or explicit flags): without it `accelerate launch` reads the user's default config.
"""

import sys

from hf_vit_d2l.training import run

if __name__ == "__main__":
    sys.exit(run())
