#!/usr/bin/env python
"""The book's recipe with the data on the device: a measuring tool for the GPU time target, not the training path.

    python benchmarks/gpu_book_run.py --epochs 10 --json_out gpu_book_run.json      # one GPU, bf16 + compile
    python benchmarks/gpu_book_run.py --device cpu --epochs 1 --max_train_samples 512 --max_eval_samples 500 \
        --no-bf16 --no-compile

SGD lr 0.1, batch 128, 10 epochs, evaluation on the test split after every epoch. All 70,000 images live on the
device as uint8 (55 MB); each batch is gathered, scaled and resized to the model's size there (bilinear; 28 -> 96
upsamples, so antialiasing does not apply), and the loss is summed on the device and read once per epoch, so no
step waits for a host copy. bf16 autocast and torch.compile are on by default. `scripts/train.py` (the Trainer) is
the supported way to train; this script shows how far the same model goes without the data pipeline.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from benchmark import read_idx  # benchmarks/benchmark.py (also puts this checkout's package on sys.path)
from torch import nn

from hf_vit_d2l import ViTD2LForImageClassification, get_preset


def load_to_device(args: argparse.Namespace) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"train"/"test": (uint8 images (N, 28, 28), int64 labels)} on the device, cut to --max_*_samples."""
    folder, splits = Path(args.data_dir), {}
    for split, prefix, limit in (("train", "train", args.max_train_samples), ("test", "t10k", args.max_eval_samples)):
        images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")[:limit]
        labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")[:limit].astype("int64")
        splits[split] = (torch.from_numpy(images.copy()).to(args.device), torch.from_numpy(labels).to(args.device))
    return splits


def book_run(args: argparse.Namespace) -> dict:
    """Train and evaluate; per-epoch loss, accuracy and seconds, plus the total including setup and compilation."""
    start_all = time.perf_counter()
    torch.manual_seed(args.seed)
    data = load_to_device(args)
    config = get_preset(args.preset)
    model = ViTD2LForImageClassification(config).to(args.device).train()
    model.set_attn_implementation("sdpa")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    device_type, size = torch.device(args.device).type, config.image_size

    def prepare(images: torch.Tensor) -> torch.Tensor:  # uint8 (B, 28, 28) -> float (B, 1, size, size) in [0, 1]
        x = images.unsqueeze(1).float().div_(255.0)
        return nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    def train_step(images, labels):
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(pixel_values=prepare(images)).logits
        loss = nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    @torch.no_grad()
    def eval_logits(images):
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=args.bf16):
            return model(pixel_values=prepare(images)).logits.float()

    if args.compile:
        train_step, eval_logits = torch.compile(train_step), torch.compile(eval_logits)
    (x_train, y_train), (x_test, y_test) = data["train"], data["test"]
    epochs = []
    for epoch in range(args.epochs):
        model.train()
        t0, total, steps = time.perf_counter(), torch.zeros((), device=args.device), 0
        order = torch.randperm(len(y_train), device=args.device)
        for i in range(0, len(y_train) - args.batch_size + 1, args.batch_size):  # full batches: one compiled shape
            idx = order[i : i + args.batch_size]
            total += train_step(x_train[idx], y_train[idx])
            steps += 1
        train_loss = float(total) / max(steps, 1)  # the one host read of the epoch
        t1 = time.perf_counter()
        model.eval()
        correct = torch.zeros((), device=args.device, dtype=torch.int64)
        for i in range(0, len(y_test), 1000):
            correct += (eval_logits(x_test[i : i + 1000]).argmax(-1) == y_test[i : i + 1000]).sum()
        accuracy = float(correct) / len(y_test)
        epochs.append(
            {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "eval_accuracy": accuracy,
                "train_seconds": t1 - t0,
                "eval_seconds": time.perf_counter() - t1,
                "train_img_per_s": steps * args.batch_size / (t1 - t0),
            }
        )
        print(json.dumps(epochs[-1]), flush=True)
    return {
        "epochs": epochs,
        "total_seconds_incl_setup_and_compile": time.perf_counter() - start_all,
        "final_eval_accuracy": epochs[-1]["eval_accuracy"] if epochs else None,
        "device": torch.cuda.get_device_name() if device_type == "cuda" else args.device,
        "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if device_type == "cuda" else None,
        "arguments": vars(args),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vit_d2l_fashion_mnist", help="Model preset (the book's by default).")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--no-bf16", dest="bf16", action="store_false", help="fp32 instead of bf16 autocast.")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="Eager instead of torch.compile.")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a small check.")
    parser.add_argument("--data_dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--max_eval_samples", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json_out", default=None)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda, but torch.cuda.is_available() is False; use --device cpu.", file=sys.stderr)
        return 2
    try:
        result = book_run(args)
    except FileNotFoundError as error:
        print(f"error: {error}; pass --data_dir with the Fashion-MNIST IDX files.", file=sys.stderr)
        return 2
    print(f"total {result['total_seconds_incl_setup_and_compile']:.1f} s, accuracy {result['final_eval_accuracy']}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
