"""Fast hyper-parameter trials for small configs: a bare training loop on in-memory Fashion-MNIST.

The `quick` recipe was chosen with this (README "Accuracy"). Each trial trains on the 55,000 training images left
after `data.train_validation_split(validation_size=5000, seed=42)` (the same split as `scripts/train.py
--validation_size 5000`) and reports accuracy on the 5,000 held-out ones after every epoch; the test split is never
read. The loop is the quick recipe's without the `Trainer` around it: uint8 images kept in memory, scaled and
normalised (Fashion-MNIST mean/std) per batch, `ImageClassificationCollator.augment_batch` (random crop with padding,
horizontal flip), AdamW with linear warm-up + cosine decay per step, label smoothing, gradient clipping at 1.0.
Differences from `scripts/train.py --recipe quick --validation_size 5000`: weight decay skips every 1-d parameter,
the position embedding and `<cls>` (the Trainer decays the last two), the shuffling and augmentation draw from one
generator seeded 1, the model is initialised under `torch.manual_seed(0)`, and nothing is saved. On the 2-core CPU
12 epochs of the quick model took 371 s here against 464.3 s through the Trainer (`--validation_size 5000`, drop path
0 there, 0.1 here), before the Trainer preloaded its images too (`--preload_images`, now the quick recipe's default).
Every epoch prints the validation accuracy of one view and with flip test-time augmentation (the mean of the
image's and its mirror's logits, `config.test_time_flip`, which the quick model turns on); `validation_accuracy` is
the configured model's. `--bf16_master_weights` trains as `scripts/train.py --bf16_master_weights` (bf16 weights,
fp32 AdamW masters, the fast path).

    python -m hf_vit_d2l.sweep --num_train_epochs 5 --config_overrides patch_size=7,hidden_size=128
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from . import data as D
from .configuration_vit_d2l import ViTD2LConfig
from .fast import apply_fast_path, to_bf16_with_master_weights
from .image_processing_vit_d2l import ViTD2LImageProcessor
from .modeling_vit_d2l import ViTD2LForImageClassification
from .presets import PRESETS, parse_config_overrides

QUICK_CONFIG = PRESETS["vit_d2l_fashion_mnist_quick"]  # the quick recipe's model


@dataclass
class SweepArguments:
    """One trial. Defaults are the quick recipe's; `--config_overrides` changes the model (canonical or book names)."""

    config_overrides: str | None = field(default=None, metadata={"help": "e.g. 'patch_size=4,hidden_size=64'."})
    num_train_epochs: float = field(default=13.0, metadata={"help": "Epochs over the 55,000 training images."})
    batch_size: int = field(default=128, metadata={"help": "Training batch."})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW peak learning rate."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (matrices only)."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    label_smoothing: float = field(default=0.1, metadata={"help": "Cross-entropy label smoothing."})
    warmup_fraction: float = field(default=0.05, metadata={"help": "Linear warm-up, as a fraction of all steps."})
    crop_padding: int = field(default=0, metadata={"help": "Random crop padding in pixels (0: no crop)."})
    flip_prob: float = field(default=0.5, metadata={"help": "Horizontal flip probability."})
    validation_size: int = field(default=5000, metadata={"help": "Held-out training images (seed 42)."})
    data_dir: str | None = field(default=None, metadata={"help": "Folder with the Fashion-MNIST IDX files."})
    json_out: str | None = field(default=None, metadata={"help": "Append the trial's result as one JSON line."})
    bf16_master_weights: bool = field(
        default=False,
        metadata={"help": "bf16 weights, fp32 AdamW masters and the fast path, as train.py --bf16_master_weights."},
    )
    num_threads: int | None = field(default=None, metadata={"help": "torch threads (default: torch's choice)."})


def load_split(validation_size: int = 5000, data_dir: str | None = None):
    """((train uint8 images, labels), (validation images, labels)) as tensors, split as `--validation_size`."""
    from datasets import ClassLabel, Dataset, Features, Value

    directory = D.ensure_local_fashion_mnist(data_dir=data_dir)
    files = D.find_fashion_mnist_files(directory)
    images = D.read_idx(files["train"][0], expected_ndim=3)
    labels = D.read_idx(files["train"][1], expected_ndim=1)
    index = Dataset.from_dict(
        {"label": labels.tolist(), "i": list(range(len(labels)))},
        features=Features({"label": ClassLabel(num_classes=10), "i": Value("int64")}),
    )
    parts = D.train_validation_split(index, validation_size=validation_size, seed=D.VALIDATION_SEED)
    x, y = torch.from_numpy(np.array(images)), torch.from_numpy(np.array(labels)).long()
    train, validation = np.array(parts["train"]["i"]), np.array(parts["validation"]["i"])
    return (x[train], y[train]), (x[validation], y[validation])


def _scale(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, H, W) -> normalised float (B, 1, size, size)."""
    x = images.float().div_(255).unsqueeze(1)
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x - D.FASHION_MNIST_MEAN) / D.FASHION_MNIST_STD


def run_trial(args: SweepArguments, log=print) -> dict:
    """Train one config; return its settings, per-epoch validation accuracy and wall time."""
    threads = torch.get_num_threads()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    try:
        return _run_trial(args, log)
    finally:
        torch.set_num_threads(threads)


def _run_trial(args: SweepArguments, log) -> dict:
    torch.manual_seed(0)
    config = ViTD2LConfig(**{**QUICK_CONFIG, **parse_config_overrides(args.config_overrides), "num_labels": 10})
    # validate() scores one view and flip TTA from the same two passes, so the model itself predicts from one view.
    test_time_flip, config.test_time_flip = config.test_time_flip, False
    model = ViTD2LForImageClassification(config)
    n_params = sum(p.numel() for p in model.parameters())
    (x_train, y_train), (x_val, y_val) = load_split(args.validation_size, args.data_dir)
    n = len(y_train)
    steps_per_epoch = math.ceil(n / args.batch_size)
    total = int(args.num_train_epochs * steps_per_epoch)
    warmup = int(args.warmup_fraction * total)

    def decays(name, param):
        return param.ndim >= 2 and "position" not in name and "cls" not in name

    named = list(model.named_parameters())
    decay_flags = [decays(name, p) for name, p in named]

    def adamw(params):  # params in model.parameters() order (the masters, with --bf16_master_weights)
        return torch.optim.AdamW(
            [
                {"params": [p for p, d in zip(params, decay_flags) if d], "weight_decay": args.weight_decay},
                {"params": [p for p, d in zip(params, decay_flags) if not d], "weight_decay": 0.0},
            ],
            lr=args.learning_rate,
            betas=(0.9, args.adam_beta2),
        )

    dtype = torch.bfloat16 if args.bf16_master_weights else torch.float32
    if args.bf16_master_weights:
        apply_fast_path(model)
        optimizer = to_bf16_with_master_weights(model, adamw)
    else:
        optimizer = adamw([p for _, p in named])

    def schedule(step):
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    normalised = ViTD2LImageProcessor(
        do_normalize=True, image_mean=[D.FASHION_MNIST_MEAN], image_std=[D.FASHION_MNIST_STD]
    )  # only its mean/std are used: the crop pads with the normalised value of black
    augmenter = D.ImageClassificationCollator(
        normalised, augment="improved", crop_padding=args.crop_padding, flip_prob=args.flip_prob, erasing_prob=0.0
    )
    generator = torch.Generator().manual_seed(1)

    @torch.no_grad()
    def validate() -> tuple[float, float]:
        """Validation accuracy of one view, and with flip test-time augmentation (`config.test_time_flip`)."""
        model.eval()
        correct = correct_tta = 0
        for i in range(0, len(y_val), 1000):
            x = _scale(x_val[i : i + 1000], config.image_size).to(dtype)
            logits = model(pixel_values=x).logits.float()
            both = logits + model(pixel_values=x.flip(-1)).logits.float()
            correct += (logits.argmax(-1) == y_val[i : i + 1000]).sum().item()
            correct_tta += (both.argmax(-1) == y_val[i : i + 1000]).sum().item()
        model.train()
        return correct / len(y_val), correct_tta / len(y_val)

    log(f"{n_params:,} params, {total} steps, {json.dumps(asdict(args))}")
    curve, curve_single, curve_tta, step, start = [], [], [], 0, time.perf_counter()
    model.train()
    while step < total:
        order = torch.randperm(n, generator=generator)
        loss_sum, correct = 0.0, 0
        for i in range(0, n, args.batch_size):
            if step >= total:
                break
            batch = order[i : i + args.batch_size]
            x = augmenter.augment_batch(_scale(x_train[batch], config.image_size), generator=generator).to(dtype)
            y = y_train[batch]
            logits = model(pixel_values=x).logits
            loss = F.cross_entropy(logits.float(), y, label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(-1) == y).sum().item()
        single, flipped = validate()
        curve_single.append(single)
        curve_tta.append(flipped)
        curve.append(flipped if test_time_flip else single)
        log(
            f"epoch {step / steps_per_epoch:.2f} | {time.perf_counter() - start:.0f} s | train_loss "
            f"{loss_sum / n:.4f} | train_accuracy {correct / n:.4f} | one view {single:.4f} | flip TTA "
            f"{flipped:.4f} | validation_accuracy {curve[-1]:.4f}"
        )
    result = {
        **asdict(args),
        "num_parameters": n_params,
        "validation_accuracy": curve[-1],
        "test_time_flip": test_time_flip,
        "validation_curve": curve,  # the model as configured: flip TTA if config.test_time_flip
        "validation_curve_one_view": curve_single,
        "validation_curve_flip_tta": curve_tta,
        "seconds": time.perf_counter() - start,
    }
    if args.json_out:
        with open(args.json_out, "a") as f:
            f.write(json.dumps(result) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(SweepArguments).parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    try:
        result = run_trial(args)
    except (ValueError, D.DataUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"validation accuracy {result['validation_accuracy']:.4f} after {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["QUICK_CONFIG", "SweepArguments", "load_split", "run_trial"]
