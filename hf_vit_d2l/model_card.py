"""The Hub model card of a trained folder, written from that run's own files (no hand-typed figures).

A training output folder (``scripts/train.py``, then ``scripts/evaluate.py``) holds ``all_results.json``,
``run_info.json``, ``trainer_state.json``, ``training_curves.png`` and, after evaluation, ``eval_results.json`` and
``confusion_matrix.png``. `build_model_card` reads them, counts the parameters of the saved model, computes FLOPs from
its config (`flops_per_image`) and, when given, the numbers of an out-of-domain probe (`measure_out_of_domain`).
Any figure the folder does not hold is written as "not measured".

    from hf_vit_d2l.model_card import build_model_card
    card = build_model_card("outputs/vit_d2l_fashion_mnist", repo_id="me/vit-d2l-fashion-mnist")
    card.save("model_card.md")
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .configuration_vit_d2l import ViTD2LConfig

HUB_DATASET_ID = "zalando-datasets/fashion_mnist"
CARD_TAGS = ["image-classification", "vision", "vit", "d2l", "fashion-mnist"]
NOT_MEASURED = "not measured"
OUT_OF_DOMAIN_FILE = "out_of_domain.json"

# The sections every generated card has (tests check them).
REQUIRED_SECTIONS = (
    "## Model description",
    "## Intended uses and limitations",
    "## Training data and procedure",
    "## Evaluation",
    "## How to use",
    "## Citation",
)


class RunFolderError(ValueError):
    """The folder is not a readable training output folder (missing model files or malformed JSON)."""


# ---------------------------------------------------------------------------------------------------------------
# Compute cost
# ---------------------------------------------------------------------------------------------------------------


def flops_breakdown(config: ViTD2LConfig) -> dict[str, int]:
    """Forward FLOPs of one image, per part, counting a multiply-add as 2 FLOPs (matrix products only).

    Biases, LayerNorm, softmax, GELU, dropout and residual additions are left out: together they are under 1% for
    the book's config. T = num_patches + 1 tokens, d = hidden_size, m = intermediate_size, P = patch_size,
    C = num_channels, L = num_hidden_layers, K = num_labels.
    """
    n, d, m = config.num_patches, config.hidden_size, config.intermediate_size
    t = n + 1
    layers = config.num_hidden_layers
    return {
        # Conv with kernel = stride = P: every patch is one (C*P*P) x d product.
        "patch_embedding": 2 * n * config.num_channels * config.patch_size**2 * d,
        # W_q, W_k, W_v, W_o on every token.
        "qkvo_projections": layers * 2 * 4 * t * d * d,
        # Q K^T over all heads: T x T scores of d/heads each, summed over heads = T*T*d MACs; same for A V.
        "attention_scores": layers * 2 * t * t * d,
        "attention_values": layers * 2 * t * t * d,
        "mlp": layers * 2 * 2 * t * d * m,
        # The head's Linear on the pooled vector.
        "head": 2 * d * config.num_labels,
    }


def flops_per_image(config: ViTD2LConfig, training: bool = False) -> int:
    """Forward FLOPs of one image (`flops_breakdown` summed); `training=True` gives forward + backward (3x).

    The book's config (96 px, patch 16, d 512, MLP 2048, 2 blocks) is 480,622,592 FLOPs forward (0.48 GFLOP) and
    1.44 GFLOP per trained image.
    """
    forward = sum(flops_breakdown(config).values())
    return 3 * forward if training else forward


# ---------------------------------------------------------------------------------------------------------------
# Reading a run folder
# ---------------------------------------------------------------------------------------------------------------


def _read_json(folder: str, name: str) -> Any | None:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise RunFolderError(f"{path} is not valid JSON ({err}). Re-run the step that writes it.") from err


def _read_training_args(folder: str) -> dict[str, Any] | None:
    """`training_args.bin` (a pickled `TrainingArguments`) as a dict, or None when absent/unreadable.

    This unpickles: call it only on your own training output (the card is built from your run).
    """
    path = os.path.join(folder, "training_args.bin")
    if not os.path.isfile(path):
        return None
    try:
        import torch

        args = torch.load(path, weights_only=False, map_location="cpu")
        return args.to_dict() if hasattr(args, "to_dict") else None
    except Exception:  # an unreadable pickle only costs the card a few hyperparameters
        return None


def read_run(folder: str | os.PathLike) -> dict[str, Any]:
    """The run's files as Python objects (None for each one the folder lacks)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise RunFolderError(f"{folder} is not a folder. Pass the output folder of scripts/train.py.")
    config_json = _read_json(folder, "config.json")
    if config_json is None:
        raise RunFolderError(
            f"{folder} has no config.json: it is not a saved model. Pass the output folder of scripts/train.py."
        )
    if config_json.get("model_type") != ViTD2LConfig.model_type:
        raise RunFolderError(
            f"{folder}/config.json has model_type={config_json.get('model_type')!r}; this card is for "
            f"{ViTD2LConfig.model_type!r} models (the training output of this package)."
        )
    return {
        "folder": folder,
        "config": ViTD2LConfig.from_dict({k: v for k, v in config_json.items() if k != "auto_map"}),
        "config_json": config_json,
        "all_results": _read_json(folder, "all_results.json"),
        "eval_results": _read_json(folder, "eval_results.json"),
        "run_info": _read_json(folder, "run_info.json"),
        "trainer_state": _read_json(folder, "trainer_state.json"),
        "out_of_domain": _read_json(folder, OUT_OF_DOMAIN_FILE),
        "training_args": _read_training_args(folder),
        "has_training_curves": os.path.isfile(os.path.join(folder, "training_curves.png")),
        "has_confusion_matrix": os.path.isfile(os.path.join(folder, "confusion_matrix.png")),
    }


def count_parameters(folder: str) -> int:
    """Parameters of the saved weights (`model.safetensors`, or the shards of an index), read from the file."""
    from safetensors import safe_open

    names = [n for n in os.listdir(folder) if n.startswith("model") and n.endswith(".safetensors")]
    if not names:
        raise RunFolderError(f"{folder} has no model*.safetensors weights. Save the model with save_pretrained.")
    total = 0
    for name in names:
        with safe_open(os.path.join(folder, name), framework="np") as f:
            for key in f.keys():  # noqa: SIM118  (safe_open is not iterable)
                total += math.prod(f.get_slice(key).get_shape())
    return total


def get_test_accuracy(run: dict[str, Any]) -> tuple[float, int | None, str] | None:
    """(accuracy, samples, source file) of the test evaluation, preferring `eval_results.json`; None if absent."""
    if run["eval_results"] and run["eval_results"].get("accuracy") is not None:
        return run["eval_results"]["accuracy"], run["eval_results"].get("num_samples"), "eval_results.json"
    if (run["run_info"] or {}).get("eval_split") == "validation":
        return None  # the run evaluated on held-out training images: only scripts/evaluate.py's result is a test one
    if run["all_results"] and run["all_results"].get("eval_accuracy") is not None:
        samples = (run["run_info"] or {}).get("eval_samples") or (run["all_results"] or {}).get("eval_samples")
        return run["all_results"]["eval_accuracy"], samples, "all_results.json"
    return None


# ---------------------------------------------------------------------------------------------------------------
# Out-of-domain probe
# ---------------------------------------------------------------------------------------------------------------


def _smooth_colour_fields(num: int, size: int, rng: np.random.Generator) -> list:
    """Photo-like RGB inputs: low-frequency random colour fields (8x8 noise upsampled bicubically) plus grain."""
    from PIL import Image

    images = []
    for _ in range(num):
        coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse, "RGB").resize((size, size), Image.BICUBIC), dtype=np.float32)
        field += rng.normal(0, 8, size=field.shape)
        images.append(Image.fromarray(np.clip(field, 0, 255).astype(np.uint8), "RGB"))
    return images


def measure_out_of_domain(
    model_folder: str | os.PathLike,
    data_dir: str = "/usr/share/datasets/fashion-mnist",
    num_samples: int = 1000,
    batch_size: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """What the model does outside its domain, measured on the first `num_samples` Fashion-MNIST test images.

    Three inputs: the test images as they are (in domain), the same images inverted (a dark item on a white
    background, as in product photos), and `num_samples` photo-like 224x224 RGB colour fields that show no garment
    at all. For each: accuracy where a label exists, the mean top-1 softmax probability, the share of predictions
    with top-1 probability above 0.9, and the share of the most frequent predicted class.
    """
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from .data import read_idx

    model_folder = os.fspath(model_folder)
    images_path = os.path.join(data_dir, "t10k-images-idx3-ubyte.gz")
    labels_path = os.path.join(data_dir, "t10k-labels-idx1-ubyte.gz")
    for path in (images_path, labels_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} not found: the out-of-domain probe needs the Fashion-MNIST test split "
                "(apt-get install dataset-fashion-mnist, or pass data_dir=...)."
            )
    pixels = read_idx(images_path, expected_ndim=3)[:num_samples]
    labels = np.asarray(read_idx(labels_path, expected_ndim=1)[:num_samples], dtype=np.int64)
    model = AutoModelForImageClassification.from_pretrained(model_folder).eval()
    processor = AutoImageProcessor.from_pretrained(model_folder)

    def predict(images: list) -> np.ndarray:
        probs = []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                inputs = processor(images=images[start : start + batch_size], return_tensors="pt")
                probs.append(model(pixel_values=inputs["pixel_values"]).logits.float().softmax(-1).numpy())
        return np.concatenate(probs)

    def summary(probs: np.ndarray, with_labels: bool) -> dict[str, Any]:
        predicted = probs.argmax(-1)
        counts = np.bincount(predicted, minlength=probs.shape[1])
        top = int(counts.argmax())
        result = {
            "num_images": int(len(probs)),
            "mean_top1_probability": float(probs.max(-1).mean()),
            "share_top1_probability_above_0.9": float((probs.max(-1) > 0.9).mean()),
            "most_frequent_prediction": model.config.id2label[top],
            "share_of_most_frequent_prediction": float(counts[top] / len(probs)),
        }
        if with_labels:
            result["accuracy"] = float((predicted == labels).mean())
        return result

    rng = np.random.default_rng(seed)
    in_domain = [Image.fromarray(p, "L") for p in pixels]
    inverted = [Image.fromarray(255 - p, "L") for p in pixels]
    return {
        "num_samples": int(len(pixels)),
        "data": f"first {len(pixels)} images of the Fashion-MNIST test split ({images_path})",
        "seed": seed,
        "in_domain": summary(predict(in_domain), True),
        "inverted": summary(predict(inverted), True),
        "photo_like_rgb": summary(predict(_smooth_colour_fields(len(pixels), 224, rng)), False),
    }


# ---------------------------------------------------------------------------------------------------------------
# The card
# ---------------------------------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return NOT_MEASURED if value is None else f"{100 * value:.2f}%"


def _num(value: Any, fmt: str = "{:,}") -> str:
    if value is None:
        return NOT_MEASURED
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|")


def _scaled_flops(value: int) -> str:
    return f"{value / 1e9:.3g} GFLOP" if value >= 1e8 else f"{value / 1e6:.3g} MFLOP"


def _seconds(value: float | None) -> str:
    if value is None:
        return NOT_MEASURED
    minutes, seconds = divmod(float(value), 60)
    hours, minutes = divmod(minutes, 60)
    if value < 60:
        return f"{value:,.1f} s"
    clock = f"{int(hours)} h {int(minutes):02d} min" if hours else f"{int(minutes)} min {seconds:04.1f} s"
    return f"{value:,.1f} s ({clock})"


_HYPERPARAMETER_KEYS = (
    "learning_rate",
    "weight_decay",
    "optim",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "lr_scheduler_type",
    "warmup_steps",
    "warmup_ratio",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "label_smoothing_factor",
    "max_grad_norm",
    "bf16",
    "fp16",
    "seed",
)


def _suspension_text(run_info: dict[str, Any], all_results: dict[str, Any]) -> str:
    """Wall-clock time the training process spent stopped (run_info `suspended_seconds`), if any."""
    suspended = run_info.get("suspended_seconds")
    runtime = all_results.get("train_runtime")
    if not suspended or not runtime:
        return ""
    return (
        f" (wall clock; the process was suspended for {_seconds(suspended)} of it, so it trained for "
        f"{_seconds(runtime - suspended)})"
    )


def _hyperparameters(run: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters from `run_info.json` (its `hyperparameters`, if any), `training_args.bin` and
    `trainer_state.json`, in that order of precedence."""
    found: dict[str, Any] = {}
    run_info = run["run_info"] or {}
    optimizer = str((run["training_args"] or {}).get("optim", ""))
    for source in (run_info.get("hyperparameters"), run["training_args"]):
        if not isinstance(source, dict):
            continue
        for key in _HYPERPARAMETER_KEYS if source is run["training_args"] else source:
            value = source.get(key)
            irrelevant = (key == "max_steps" and value in (-1, 0)) or (
                key.startswith("adam_") and optimizer and "adam" not in optimizer.lower()
            )
            if key not in found and value is not None and not irrelevant:
                found[key] = value
    state = run["trainer_state"] or {}
    for key, state_key in (
        ("per_device_train_batch_size", "train_batch_size"),
        ("num_train_epochs", "num_train_epochs"),
        ("optimizer_steps", "global_step"),
    ):
        if key not in found and state.get(state_key) is not None:
            found[key] = state[state_key]
    for key in ("seed", "num_processes", "global_batch_size"):
        if run_info.get(key) is not None:
            found[key] = run_info[key]
    return found


def _epoch_table(state: dict[str, Any] | None) -> str:
    """Per-epoch train loss, eval loss and eval accuracy from `trainer_state.json`'s log history."""
    if not state or not state.get("log_history"):
        return f"Per-epoch figures: {NOT_MEASURED} (no trainer_state.json)."
    rows: dict[float, dict[str, float]] = {}
    last_train_loss = None
    for entry in state["log_history"]:
        if "loss" in entry:
            last_train_loss = entry["loss"]
        if "eval_loss" in entry or "eval_accuracy" in entry:
            epoch = round(float(entry.get("epoch", 0)), 2)
            rows[epoch] = {
                "train_loss": last_train_loss,
                "eval_loss": entry.get("eval_loss"),
                "eval_accuracy": entry.get("eval_accuracy"),
            }
    if not rows:
        return f"Per-epoch figures: {NOT_MEASURED} (no evaluation entries in trainer_state.json)."
    lines = ["| epoch | train loss (last logged) | eval loss | eval accuracy |", "|---:|---:|---:|---:|"]
    for epoch, row in sorted(rows.items()):
        lines.append(
            f"| {epoch:g} | {_num(row['train_loss'], '{:.4f}')} | {_num(row['eval_loss'], '{:.4f}')} "
            f"| {_pct(row['eval_accuracy'])} |"
        )
    return "\n".join(lines)


def _out_of_domain_text(ood: dict[str, Any] | None) -> str:
    if not ood:
        return (
            f"Behaviour on other images: {NOT_MEASURED} for this run (no `{OUT_OF_DOMAIN_FILE}`; "
            "`scripts/push_to_hub.py` measures it with `hf_vit_d2l.model_card.measure_out_of_domain`). Expect "
            "confident but meaningless labels on anything that is not a Fashion-MNIST-like image."
        )
    ind, inv, rgb = ood["in_domain"], ood["inverted"], ood["photo_like_rgb"]
    return "\n".join(
        [
            f"Measured on the {ood['data']} (`{OUT_OF_DOMAIN_FILE}`):",
            "",
            "| input | accuracy | mean top-1 probability | top-1 probability > 0.9 | most frequent prediction |",
            "|---|---:|---:|---:|---|",
            f"| test images as they are | {_pct(ind.get('accuracy'))} | {ind['mean_top1_probability']:.3f} "
            f"| {_pct(ind['share_top1_probability_above_0.9'])} | {_md_escape(ind['most_frequent_prediction'])} "
            f"({_pct(ind['share_of_most_frequent_prediction'])}) |",
            f"| the same images inverted (dark item on white) | {_pct(inv.get('accuracy'))} "
            f"| {inv['mean_top1_probability']:.3f} | {_pct(inv['share_top1_probability_above_0.9'])} "
            f"| {_md_escape(inv['most_frequent_prediction'])} ({_pct(inv['share_of_most_frequent_prediction'])}) |",
            f"| {rgb['num_images']} photo-like 224x224 RGB colour fields (no garment at all) | no label "
            f"| {rgb['mean_top1_probability']:.3f} | {_pct(rgb['share_top1_probability_above_0.9'])} "
            f"| {_md_escape(rgb['most_frequent_prediction'])} ({_pct(rgb['share_of_most_frequent_prediction'])}) |",
            "",
            _out_of_domain_reading(ind, inv, rgb),
        ]
    )


def _out_of_domain_reading(ind: dict[str, Any], inv: dict[str, Any], rgb: dict[str, Any]) -> str:
    """What the probe's numbers say, in words chosen from the numbers (not a fixed verdict)."""
    words = [
        'The model always answers with one of the ten classes: it has no "none of these" output. '
        f"Inverting the images (a dark item on a light background, as in most product photos) takes accuracy from "
        f"{_pct(ind.get('accuracy'))} to {_pct(inv.get('accuracy'))}. On photo-like images that show no garment "
        f"at all it answers {_md_escape(rgb['most_frequent_prediction'])} for "
        f"{_pct(rgb['share_of_most_frequent_prediction'])} of them: those labels are meaningless."
    ]
    in_conf = ind["mean_top1_probability"]
    for name, part in (("inverted images", inv), ("the photo-like images", rgb)):
        conf = part["mean_top1_probability"]
        if conf >= 0.8 * in_conf:
            words.append(
                f"On {name} it is about as confident as on real test images or more (mean top-1 probability "
                f"{conf:.3f} against {in_conf:.3f}; {_pct(part['share_top1_probability_above_0.9'])} above 0.9): "
                "its probability does not flag such inputs."
            )
        else:
            words.append(
                f"On {name} it is less confident than on real test images (mean top-1 probability {conf:.3f} "
                f'against {in_conf:.3f}), but the probability is not calibrated as an "unknown input" signal.'
            )
    words.append("Use it only on images prepared like Fashion-MNIST.")
    return " ".join(words)


def build_model_card(
    folder: str | os.PathLike,
    repo_id: str | None = None,
    out_of_domain: dict[str, Any] | None = None,
    stock_vit_repo_id: str | None = None,
    license: str = "apache-2.0",
) -> ModelCard:
    """The Hub model card of a training output folder, every figure read from the folder's files.

    Args:
        folder: the output folder of `scripts/train.py` (and `scripts/evaluate.py`).
        repo_id: the Hub repository the card is for (`user/name`); used in the usage snippets.
        out_of_domain: a `measure_out_of_domain` result; defaults to the folder's `out_of_domain.json`, if any.
        stock_vit_repo_id: the repository of the stock-transformers export, if one is pushed.
        license: the card's license (the package is Apache-2.0; Fashion-MNIST is MIT).
    """
    run = read_run(folder)
    folder = run["folder"]
    config: ViTD2LConfig = run["config"]
    if out_of_domain is None:
        out_of_domain = run["out_of_domain"]
    repo = repo_id or "YOUR_USER/vit-d2l-fashion-mnist"
    model_name = repo.split("/")[-1]
    accuracy = get_test_accuracy(run)
    run_info = run["run_info"] or {}
    all_results = run["all_results"] or {}
    eval_results = run["eval_results"] or {}

    eval_results_meta = None
    if accuracy is not None:
        eval_results_meta = [
            EvalResult(
                task_type="image-classification",
                task_name="Image Classification",
                dataset_type=HUB_DATASET_ID,
                dataset_name="Fashion-MNIST",
                dataset_split="test",
                metric_type="accuracy",
                metric_name="Accuracy",
                metric_value=accuracy[0],
            )
        ]
    card_data = ModelCardData(
        library_name="transformers",
        license=license,
        tags=list(CARD_TAGS),
        datasets=[HUB_DATASET_ID],
        metrics=["accuracy"],
        pipeline_tag="image-classification",
        model_name=model_name,
        eval_results=eval_results_meta,
    )

    num_params = count_parameters(folder)
    breakdown = flops_breakdown(config)
    forward = flops_per_image(config)
    tokens = config.num_patches + 1
    grid = config.image_size // config.patch_size
    labels = [config.id2label[i] for i in range(config.num_labels)]
    hyper = _hyperparameters(run)

    sections: list[str] = []
    sections.append(f"# {model_name}")
    sections.append(
        'The Vision Transformer of *Dive into Deep Learning* (section 11.8, "Transformers for Vision"), trained '
        "from scratch on Fashion-MNIST and packaged as a Hugging Face `transformers` model (`model_type: "
        f"{config.model_type}`) with the package hf-vit-d2l's code files next to the weights, so it loads with "
        "`trust_remote_code=True` and no extra installation."
    )
    if accuracy is not None:
        samples = f" on {accuracy[1]:,} test images" if accuracy[1] else ""
        sections.append(f"**Test accuracy: {_pct(accuracy[0])}**{samples} (from `{accuracy[2]}`).")
    else:
        sections.append(f"**Test accuracy: {NOT_MEASURED}** (the folder has no evaluation results).")

    # -- architecture
    arch = [
        "## Model description",
        "",
        "The book's `ViT`: a patch embedding (`PatchEmbedding`, one convolution with kernel = stride = patch size), "
        "a learnable `<cls>` token and position embedding, `num_blks` pre-norm `ViTBlock`s (multi-head "
        "self-attention and a GELU `ViTMLP`, each as X + f(LayerNorm(X))), and a head of LayerNorm + Linear on the "
        f"{'`<cls>` token' if config.pooling == 'cls' else 'mean of the patch tokens'}.",
        "",
        "| | book name | value |",
        "|---|---|---:|",
        f"| input | `img_size` | {config.image_size}x{config.image_size}, {config.num_channels} channel(s) |",
        f"| patch size | `patch_size` | {config.patch_size} ({grid}x{grid} = {config.num_patches} patches) |",
        f"| tokens per image | `num_patches + 1` | {tokens} |",
        f"| hidden size | `num_hiddens` | {config.hidden_size} |",
        f"| MLP size | `mlp_num_hiddens` | {config.intermediate_size} |",
        f"| heads | `num_heads` | {config.num_attention_heads} |",
        f"| blocks | `num_blks` | {config.num_hidden_layers} |",
        f"| dropout (embeddings / blocks) | `emb_dropout` / `blk_dropout` | {config.embedding_dropout_prob} / "
        f"{config.block_dropout_prob} |",
        f"| bias in W_q, W_k, W_v, W_o | `use_bias` | {config.qkv_bias} |",
        f"| classes | `num_classes` | {config.num_labels} |",
        f"| parameters | | {num_params:,} |",
        f"| forward FLOPs per image | | {forward:,} ({_scaled_flops(forward)}) |",
        f"| training FLOPs per image (3x forward) | | {3 * forward:,} ({_scaled_flops(3 * forward)}) |",
        "",
        "Parameters are counted from the saved weights. FLOPs count a multiply-add as 2 and include only the "
        "matrix products (`hf_vit_d2l.model_card.flops_per_image`): "
        + ", ".join(f"{name.replace('_', ' ')} {value / forward:.1%}" for name, value in breakdown.items())
        + ".",
    ]
    if config.pooling != "cls" or config.init_style != "d2l" or config.drop_path_rate:
        arch += [
            "",
            f"Differences from the book's code in this run: pooling `{config.pooling}`, init `{config.init_style}` "
            f"(position embedding std {config.position_embedding_std}), stochastic depth {config.drop_path_rate}.",
        ]
    if config.test_time_flip:
        arch += [
            "",
            "Predictions use flip test-time augmentation (`config.test_time_flip=True`, not in the book): in eval "
            "mode the model returns the mean of the logits of the image and of its left-right mirror, two forward "
            "passes per image (FLOPs above are for one). Set `model.config.test_time_flip = False` for one pass.",
        ]
    sections.append("\n".join(arch))

    # -- intended use
    sections.append(
        "\n".join(
            [
                "## Intended uses and limitations",
                "",
                "Intended use: classifying Fashion-MNIST-style images, that is 28x28 grayscale pictures of a single "
                "clothing item, centred, white (bright) on a black background, into the ten Fashion-MNIST classes; "
                "and teaching: the model is the book's, weight for weight. The image processor converts any input "
                f"to {config.num_channels} channel(s) and resizes it to {config.image_size}x{config.image_size} "
                "(bilinear, scaled to [0, 1], no normalisation), so any image *runs*; that does not make the answer "
                "meaningful.",
                "",
                _out_of_domain_text(out_of_domain),
                "",
                "It is not a general clothing or product classifier, it was not evaluated for any decision about "
                "people, and Fashion-MNIST's ten classes reflect one retailer's catalogue.",
            ]
        )
    )

    # -- training
    train = ["## Training data and procedure", ""]
    train.append(
        f"Data: [Fashion-MNIST](https://huggingface.co/datasets/{HUB_DATASET_ID}) (Xiao et al., 2017): "
        "60,000 training and 10,000 test images, 28x28 grayscale, ten classes"
        + (f"; this run read `{_md_escape(run_info['dataset'])}`" if run_info.get("dataset") else "")
        + f", training samples: {_num(run_info.get('train_samples'))}, "
        f"samples evaluated after each epoch: {_num(run_info.get('eval_samples'))}."
    )
    train += [
        "",
        f"- Recipe: {_md_escape(run_info['recipe']) if run_info.get('recipe') else NOT_MEASURED}",
        f"- Hardware: {_md_escape(run_info['hardware']) if run_info.get('hardware') else NOT_MEASURED}",
        f"- Augmentation: {_md_escape(run_info.get('augmentation', NOT_MEASURED))}; mixed precision: "
        f"{_md_escape(run_info.get('mixed_precision', NOT_MEASURED))}"
        + (
            "; software: " + ", ".join(f"{k} {v}" for k, v in run_info["versions"].items())
            if isinstance(run_info.get("versions"), dict)
            else ""
        ),
        f"- Training time: {_seconds(all_results.get('train_runtime'))}, "
        f"{_num(all_results.get('train_samples_per_second'), '{:,.1f}')} samples/s, "
        f"{_num(all_results.get('epoch'), '{:g}')} epochs" + _suspension_text(run_info, all_results),
    ]
    if run_info.get("command"):
        train += ["", "Command that produced this run:", "", "```bash", str(run_info["command"]), "```"]
    train += ["", "Hyperparameters:", ""]
    if hyper:
        train += ["| name | value |", "|---|---|"] + [f"| {k} | {_md_escape(v)} |" for k, v in hyper.items()]
    else:
        train.append(NOT_MEASURED + " (no run_info.json, training_args.bin or trainer_state.json).")
    train += ["", _epoch_table(run["trainer_state"])]
    if run["has_training_curves"]:
        train += ["", "![Training curves: train loss, eval loss and eval accuracy per epoch](training_curves.png)"]
    sections.append("\n".join(train))

    # -- evaluation
    ev = ["## Evaluation", ""]
    if accuracy is None:
        ev.append(f"Test accuracy: {NOT_MEASURED}. Run `scripts/evaluate.py` on the folder, then rebuild the card.")
    else:
        ev.append(
            f"Test split of Fashion-MNIST ({_num(accuracy[1])} images): accuracy **{_pct(accuracy[0])}**"
            + (f", cross-entropy loss {eval_results['loss']:.4f}" if eval_results.get("loss") is not None else "")
            + (
                f", cross-entropy loss {all_results['eval_loss']:.4f}"
                if accuracy[2] == "all_results.json" and all_results.get("eval_loss") is not None
                else ""
            )
            + f" (`{accuracy[2]}`)."
        )
    per_class = eval_results.get("per_class_accuracy")
    ev.append("")
    if per_class:
        ev += ["| class | accuracy |", "|---|---:|"]
        ev += [f"| {_md_escape(name)} | {_pct(per_class.get(name))} |" for name in eval_results.get("labels", labels)]
    else:
        ev.append(f"Per-class accuracy: {NOT_MEASURED} (no eval_results.json from scripts/evaluate.py).")
    ev.append("")
    if run["has_confusion_matrix"]:
        ev.append("![Confusion matrix on the test split (rows: true class, columns: predicted)](confusion_matrix.png)")
    else:
        ev.append(f"Confusion matrix: {NOT_MEASURED}.")
    sections.append("\n".join(ev))

    # -- how to use
    stock = stock_vit_repo_id or "YOUR_USER/vit-d2l-fashion-mnist-stock-vit"
    sections.append(
        "\n".join(
            [
                "## How to use",
                "",
                "With the `pipeline` (the model's own code is downloaded from this repository):",
                "",
                "```python",
                "from transformers import pipeline",
                "",
                f'classifier = pipeline("image-classification", model="{repo}", trust_remote_code=True)',
                'print(classifier("my_image.png", top_k=3))',
                "```",
                "",
                "With the model and its image processor:",
                "",
                "```python",
                "import torch",
                "from PIL import Image",
                "from transformers import AutoImageProcessor, AutoModelForImageClassification",
                "",
                f'processor = AutoImageProcessor.from_pretrained("{repo}", trust_remote_code=True)',
                f'model = AutoModelForImageClassification.from_pretrained("{repo}", trust_remote_code=True).eval()',
                'inputs = processor(images=Image.open("my_image.png"), return_tensors="pt")',
                "with torch.no_grad():",
                "    probs = model(**inputs).logits.softmax(-1)[0]",
                "print(model.config.id2label[int(probs.argmax())], float(probs.max()))",
                "```",
                "",
                "From the command line, for files or whole folders (with the hf-vit-d2l package installed):",
                "",
                "```bash",
                f"python -m hf_vit_d2l.predict my_images/ --model {repo} --top_k 3",
                "```",
                "",
                "As a stock `transformers.ViTForImageClassification` (no remote code; same logits in eval mode; "
                '`pooling="cls"` only): `hf_vit_d2l.to_transformers_vit(model)` converts it'
                + (f", and [{stock}](https://huggingface.co/{stock}) holds that export." if stock_vit_repo_id else ".")
                + (
                    " That repository's copy takes RGB input (the grayscale conversion folded into the patch "
                    "embedding by `hf_vit_d2l.hub.rgb_input_stock_vit`), so the stock `pipeline` works on it."
                    if stock_vit_repo_id
                    else ""
                )
                + " `to_transformers_vit` itself keeps the model's single input channel: pass it grayscale images.",
                "",
                "```python",
                "from hf_vit_d2l import to_transformers_vit",
                "",
                "stock = to_transformers_vit(model)  # a transformers.ViTForImageClassification",
                'stock.save_pretrained("vit-d2l-stock")',
                "```",
            ]
        )
    )

    # -- citation
    sections.append(
        "\n".join(
            [
                "## Citation",
                "",
                "```bibtex",
                "@book{zhang2023dive,",
                "  title     = {Dive into Deep Learning},",
                "  author    = {Zhang, Aston and Lipton, Zachary C. and Li, Mu and Smola, Alexander J.},",
                "  publisher = {Cambridge University Press},",
                "  year      = {2023},",
                "  note      = {\\url{https://D2L.ai}}",
                "}",
                "",
                "@inproceedings{dosovitskiy2021image,",
                "  title     = {An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale},",
                "  author    = {Dosovitskiy, Alexey and Beyer, Lucas and Kolesnikov, Alexander and Weissenborn, Dirk "
                "and Zhai, Xiaohua and Unterthiner, Thomas and Dehghani, Mostafa and Minderer, Matthias and "
                "Heigold, Georg and Gelly, Sylvain and Uszkoreit, Jakob and Houlsby, Neil},",
                "  booktitle = {International Conference on Learning Representations},",
                "  year      = {2021}",
                "}",
                "",
                "@article{xiao2017fashionmnist,",
                "  title   = {Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning Algorithms},",
                "  author  = {Xiao, Han and Rasul, Kashif and Vollgraf, Roland},",
                "  journal = {arXiv preprint arXiv:1708.07747},",
                "  year    = {2017}",
                "}",
                "```",
            ]
        )
    )

    body = "\n\n".join(sections) + "\n"
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")


__all__ = [
    "REQUIRED_SECTIONS",
    "RunFolderError",
    "build_model_card",
    "count_parameters",
    "flops_breakdown",
    "flops_per_image",
    "get_test_accuracy",
    "measure_out_of_domain",
    "read_run",
]
