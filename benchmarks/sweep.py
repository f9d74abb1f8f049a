#!/usr/bin/env python
"""One fast hyper-parameter trial on a held-out validation split of Fashion-MNIST's training set (never the test set).

    python benchmarks/sweep.py --num_train_epochs 5 --learning_rate 1e-3
    python benchmarks/sweep.py --config_overrides '{"patch_size": 4, "hidden_size": 64}' --crop_padding 4 \
        --json_out sweep.jsonl

The quick recipe was chosen with trials like these; the defaults are its settings. The loop is the quick recipe's
without the Trainer around it: uint8 images in memory, scaled and normalised per batch (mean/std of the training
images), random crop with padding and horizontal flip, AdamW with linear warm-up and cosine decay per step, label
smoothing, gradient clipping at 1.0, weight decay on matrices only. The validation split is
`Dataset.train_test_split(test_size=validation_size, seed=42, stratify_by_column="label")` of the 60,000 training
images. Every epoch prints the validation accuracy of one view and with flip test-time augmentation (the mean of
the image's and its mirror's logits); `validation_accuracy` is the configured model's (`config.test_time_flip`).
"""

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from benchmark import load_config, read_idx  # benchmarks/benchmark.py (also puts this checkout's package on sys.path)
from transformers import HfArgumentParser

from hf_vit_d2l import ViTD2LForImageClassification

QUICK_PRESET = "vit_d2l_fashion_mnist_quick"


@dataclass
class SweepArguments:
    """One trial; defaults are the quick recipe's. `--config_overrides` changes the model (a JSON object)."""

    preset: str = field(default=QUICK_PRESET, metadata={"help": "Model preset to start from."})
    config_overrides: str = field(default="{}", metadata={"help": 'JSON config fields: {"hidden_size": 64}.'})
    num_train_epochs: float = field(default=13.0, metadata={"help": "Epochs over the training part."})
    batch_size: int = field(default=128, metadata={"help": "Training batch."})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW peak learning rate."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (matrices only)."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    label_smoothing: float = field(default=0.1, metadata={"help": "Cross-entropy label smoothing."})
    warmup_fraction: float = field(default=0.05, metadata={"help": "Linear warm-up, as a fraction of all steps."})
    crop_padding: int = field(default=0, metadata={"help": "Random crop padding in pixels (0: no crop)."})
    flip_prob: float = field(default=0.5, metadata={"help": "Horizontal flip probability."})
    validation_size: int = field(default=5000, metadata={"help": "Held-out training images (seed 42)."})
    data_dir: str = field(default="/usr/share/datasets/fashion-mnist", metadata={"help": "Fashion-MNIST IDX files."})
    json_out: str | None = field(default=None, metadata={"help": "Append the trial's result as one JSON line."})

    def __post_init__(self):
        self.config = load_config(self.preset, self.config_overrides)


def load_split(validation_size: int, data_dir: str):
    """((train images, labels), (validation images, labels)): uint8 (N, 28, 28) and int64 tensors."""
    from datasets import ClassLabel, Dataset, Features, Value

    folder = Path(data_dir)
    images = torch.from_numpy(read_idx(folder / "train-images-idx3-ubyte.gz").copy())
    labels = torch.from_numpy(read_idx(folder / "train-labels-idx1-ubyte.gz").astype("int64"))
    index = Dataset.from_dict(
        {"label": labels.tolist(), "i": list(range(len(labels)))},
        features=Features({"label": ClassLabel(num_classes=10), "i": Value("int64")}),
    )
    parts = index.train_test_split(test_size=validation_size, seed=42, stratify_by_column="label")
    train, validation = torch.tensor(parts["train"]["i"]), torch.tensor(parts["test"]["i"])
    return (images[train], labels[train]), (images[validation], labels[validation])


def augment(x: torch.Tensor, padding: int, flip_prob: float, fill: float, generator: torch.Generator):
    """Random crop with `padding` (filled with `fill`) and horizontal flip of a (B, C, H, W) batch."""
    batch, _, height, width = x.shape
    if padding > 0:
        padded = F.pad(x, (padding,) * 4, value=fill)
        top, left = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator)
        x = torch.stack([p[:, t : t + height, s : s + width] for p, t, s in zip(padded, top, left)])
    flip = torch.rand(batch, generator=generator) < flip_prob
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def adamw_with_schedule(model, args: SweepArguments, total: int):
    """AdamW (decay on matrices but the position embedding and <cls>), warm-up then cosine decay per step."""
    groups = {True: [], False: []}
    for name, param in model.named_parameters():
        groups[param.ndim >= 2 and "position" not in name and "cls" not in name].append(param)
    optimizer = torch.optim.AdamW(
        [{"params": groups[True], "weight_decay": args.weight_decay}, {"params": groups[False], "weight_decay": 0.0}],
        lr=args.learning_rate,
        betas=(0.9, args.adam_beta2),
    )
    warmup = int(args.warmup_fraction * total)

    def schedule(step):
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


@torch.no_grad()
def validate(model, images: torch.Tensor, labels: torch.Tensor, scale) -> tuple[float, float]:
    """Validation accuracy of one view, and with flip test-time augmentation (both from the same two passes)."""
    model.eval()
    correct = correct_tta = 0
    for i in range(0, len(labels), 1000):
        x, y = scale(images[i : i + 1000]), labels[i : i + 1000]
        logits = model(pixel_values=x).logits
        both = logits + model(pixel_values=x.flip(-1)).logits
        correct += (logits.argmax(-1) == y).sum().item()
        correct_tta += (both.argmax(-1) == y).sum().item()
    model.train()
    return correct / len(labels), correct_tta / len(labels)


def run_trial(args: SweepArguments, log=print) -> dict:
    """Train one config; return its settings, per-epoch validation accuracy and wall time."""
    (x_train, y_train), (x_val, y_val) = load_split(args.validation_size, args.data_dir)
    mean, std = x_train.float().mean().item() / 255, x_train.float().std().item() / 255
    size = args.config.image_size

    def scale(images: torch.Tensor) -> torch.Tensor:  # uint8 (B, H, W) -> normalised float (B, 1, size, size)
        x = images.float().div_(255).unsqueeze(1)
        if size != x.shape[-1]:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return (x - mean) / std

    torch.manual_seed(0)
    test_time_flip = args.config.test_time_flip
    args.config.test_time_flip = False  # validate() scores both views from the same passes
    model = ViTD2LForImageClassification(args.config).train()
    n, n_params = len(y_train), sum(p.numel() for p in model.parameters())
    steps_per_epoch = math.ceil(n / args.batch_size)
    total = int(args.num_train_epochs * steps_per_epoch)
    optimizer, scheduler = adamw_with_schedule(model, args, total)
    generator = torch.Generator().manual_seed(1)
    log(f"{n_params:,} params, {total} steps, {json.dumps(asdict(args))}")
    curves, step, start = {"one_view": [], "flip_tta": []}, 0, time.perf_counter()
    while step < total:
        order, loss_sum = torch.randperm(n, generator=generator), 0.0
        for i in range(0, n, args.batch_size):
            if step >= total:
                break
            batch = order[i : i + args.batch_size]
            x = augment(scale(x_train[batch]), args.crop_padding, args.flip_prob, -mean / std, generator)
            loss = F.cross_entropy(model(pixel_values=x).logits, y_train[batch], label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            loss_sum += loss.item() * len(batch)
        for curve, accuracy in zip(curves.values(), validate(model, x_val, y_val, scale)):
            curve.append(accuracy)
        log(
            f"epoch {step / steps_per_epoch:.2f} | {time.perf_counter() - start:.0f} s | train_loss {loss_sum / n:.4f}"
            f" | one view {curves['one_view'][-1]:.4f} | flip TTA {curves['flip_tta'][-1]:.4f}"
        )
    curve = curves["flip_tta" if test_time_flip else "one_view"]
    result = {
        **asdict(args),
        "num_parameters": n_params,
        "test_time_flip": test_time_flip,
        "validation_accuracy": curve[-1],
        "validation_curve": curve,
        "validation_curve_one_view": curves["one_view"],
        "validation_curve_flip_tta": curves["flip_tta"],
        "seconds": time.perf_counter() - start,
    }
    if args.json_out:
        with open(args.json_out, "a") as f:
            f.write(json.dumps(result) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    try:
        (args,) = HfArgumentParser(SweepArguments).parse_args_into_dataclasses(args=argv)
        result = run_trial(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"validation accuracy {result['validation_accuracy']:.4f} after {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
