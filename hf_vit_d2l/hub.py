"""The model card of a trained folder (`templates/model_card.md` filled from the run's own files) and its upload.

from hf_vit_d2l.hub import build_model_card
build_model_card("outputs/vit_d2l_fashion_mnist", repo_id="me/vit-d2l-fashion-mnist").save("README.md")
"""

from __future__ import annotations

import glob
import mmap
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import huggingface_hub
import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData, constants, get_token
from transformers import HfArgumentParser, ViTImageProcessorPil

from .configuration_vit_d2l import ViTD2LConfig
from .convert import to_transformers_vit
from .data import HUB_DATASET_ID
from .evaluation import ModelLoadError, check_model_folder, count_parameters, load_model, read_json
from .image_processing_vit_d2l import LUMA
from .modeling_vit_d2l import ViTD2LForImageClassification
from .utils import hub_available, save_folder_atomically

TEMPLATES = Path(__file__).resolve().parent / "templates"
# Auto classes a Hub user without this package loads the model with (`trust_remote_code=True`).
AUTO_CLASSES = ("AutoConfig", "AutoModel", "AutoModelForImageClassification")
# TrainingArguments fields the card lists (from run_info.json's `training_args`), in this order.
HYPERPARAMETERS = (
    "learning_rate",
    "weight_decay",
    "optim",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "lr_scheduler_type",
    "warmup_steps",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "label_smoothing_factor",
    "max_grad_norm",
    "bf16",
    "fp16",
)
NOT_MEASURED = "not measured"  # what the card says for a figure the folder lacks
# A recorded training command's `--hub_token VALUE` or `--hub_token=VALUE` (also argparse's `--hub-token` alias and
# abbreviations such as `--hub_tok`: hub_token is the only TrainingArguments field that starts with hub_t).
HUB_TOKEN_ARGUMENT = re.compile(r"(--hub[_-]t[\w-]*(?:=|\s+))('[^']*'|\"[^\"]*\"|\S+)")
REDACTED = "<redacted>"
# Never staged for upload: pickles, since loading one can run code (run_info.json holds training_args.bin's content).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle")


class RunFolderError(ValueError):
    """The folder is not a readable training output folder (missing model files or malformed JSON)."""


class HubPushError(RuntimeError):
    """The push cannot go ahead (offline, no token, incomplete folder, a link or a token in it); nothing changed."""


# --------------------------------------------------------------------------------------------- Figures of a run folder


def flops_per_image(config: ViTD2LConfig) -> int:
    """Forward FLOPs of one image, a multiply-add counted as 2: the patch convolution, per block W_q/W_k/W_v/W_o,
    Q K^T and A V (T^2 d each, T tokens of size d) and the MLP, and the head; biases and norms are left out."""
    n, d, m = config.num_patches, config.hidden_size, config.intermediate_size
    t = n + 1
    per_block = 4 * t * d * d + 2 * t * t * d + 2 * t * d * m
    return 2 * (
        n * config.num_channels * config.patch_size**2 * d
        + config.num_hidden_layers * per_block
        + d * config.num_labels
    )


def _read_json(folder: str, name: str) -> dict[str, Any]:
    return read_json(os.path.join(folder, name), RunFolderError)


def get_test_accuracy(eval_results: dict, all_results: dict, run_info: dict) -> tuple[float, int | None, str] | None:
    """(accuracy, samples, source file) of a test-split evaluation, preferring `eval_results.json`; else None."""
    if eval_results.get("accuracy") is not None and eval_results.get("eval_split", "test") == "test":
        return eval_results["accuracy"], eval_results.get("num_samples"), "eval_results.json"
    if all_results.get("eval_accuracy") is not None and run_info.get("eval_split", "test") == "test":
        return all_results["eval_accuracy"], run_info.get("eval_samples"), "all_results.json"
    return None


# ------------------------------------------------------------------------------------------------------------ The card


def redact_hub_token(command: str) -> str:
    """`command` with the value of every `--hub_token VALUE` / `--hub_token=VALUE` (or `--hub-token`) replaced."""
    return HUB_TOKEN_ARGUMENT.sub(rf"\1{REDACTED}", command)


def _format(value: float | None, spec: str = ".4f") -> str:
    return NOT_MEASURED if value is None else format(value, spec)


def _flops(flops: int) -> str:
    short = f"{flops / 1e9:.3g} GFLOP" if flops >= 1e8 else f"{flops / 1e6:.3g} MFLOP"
    return f"{flops:,} ({short})"


def _table_rows(rows: list[tuple]) -> str:
    """Markdown table rows, one per tuple ("" for none)."""
    return "\n".join("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)


def _card_data(
    repo_id: str | None, dataset_id: str | None, dataset_name: str, accuracy: float | None
) -> ModelCardData:
    """The card's YAML metadata: what the Hub validates and indexes (its model-index holds the test accuracy)."""
    results = None
    if accuracy is not None:
        results = [
            EvalResult(
                task_type="image-classification",
                dataset_type=dataset_id or "imagefolder",
                dataset_name=dataset_name,
                dataset_split="test",
                metric_type="accuracy",
                metric_value=accuracy,
            )
        ]
    tags = ["image-classification", "vision", "vit", "d2l"]
    if dataset_id == HUB_DATASET_ID:
        tags.append("fashion-mnist")
    return ModelCardData(
        library_name="transformers",
        license="apache-2.0",
        tags=tags,
        datasets=[dataset_id] if dataset_id else None,
        metrics=["accuracy"],
        pipeline_tag="image-classification",
        model_name=(repo_id or "vit-d2l").split("/")[-1],
        eval_results=results,
    )


def _test_figures(eval_results: dict, all_results: dict, run_info: dict) -> dict[str, Any]:
    """The card fields of the test evaluation (accuracy, its source and size, loss, per-class and inverted)."""
    accuracy, samples, source = get_test_accuracy(eval_results, all_results, run_info) or (None, None, None)
    loss = eval_results.get("loss") if source == "eval_results.json" else all_results.get("eval_loss")
    per_class = eval_results.get("per_class_accuracy") or {}
    num_samples = eval_results.get("num_samples")
    inverted = eval_results.get("inverted_accuracy")
    return {
        "accuracy": _format(accuracy, ".2%"),
        "accuracy_source": source,
        "test_images": f"{samples:,} test images" if samples else "the test images",
        "test_loss": _format(loss),
        "per_class_rows": _table_rows(
            [(name, _format(per_class.get(name), ".2%")) for name in eval_results.get("labels") or per_class]
        ),
        "inverted_accuracy": None if inverted is None else _format(inverted, ".2%"),
        "upright_accuracy": _format(eval_results.get("accuracy"), ".2%"),
        "inverted_images": f"{num_samples:,} test images" if num_samples else "test images",
    }


def _run_figures(run_info: dict, all_results: dict, log_history: list[dict]) -> dict[str, Any]:
    """The card fields of the training run: data, hardware, time, command, hyperparameters, per-epoch figures."""
    training_args = run_info.get("training_args") or {}
    hyperparameters = [(k, training_args[k]) for k in HYPERPARAMETERS if training_args.get(k) not in (None, -1)]
    hyperparameters += [(k, run_info[k]) for k in ("seed", "num_processes", "global_batch_size") if k in run_info]
    if run_info.get("ema_decay"):
        hyperparameters.append(("ema_decay", run_info["ema_decay"]))
    epochs, train_loss = [], None
    for entry in log_history:
        train_loss = entry.get("loss", train_loss)  # the last one logged before the evaluation
        if "eval_loss" in entry or "eval_accuracy" in entry:
            row = (_format(train_loss), _format(entry.get("eval_loss")), _format(entry.get("eval_accuracy"), ".2%"))
            epochs.append((entry.get("epoch"), *row))
    # A run that evaluates only once, after training (eval_strategy "no"), has its train loss alone per epoch
    train_losses = [(entry.get("epoch"), _format(entry["loss"])) for entry in log_history if "loss" in entry]
    evaluated = {"no": "once, after training", "epoch": "after each epoch"}
    training_time = NOT_MEASURED
    if all_results.get("train_runtime"):
        speed = _format(all_results.get("train_samples_per_second"), ".1f")
        training_time = f"{all_results['train_runtime']:.1f} s, {speed} samples/s, {all_results.get('epoch')} epochs"
    versions = run_info.get("versions") or {}
    return {
        "run_dataset": str(run_info.get("dataset") or NOT_MEASURED),
        "train_samples": str(run_info.get("train_samples") or NOT_MEASURED),
        "eval_samples": str(run_info.get("eval_samples") or NOT_MEASURED),
        "eval_split": run_info.get("eval_split") or "test",
        "recipe": str(run_info.get("recipe") or NOT_MEASURED),
        "hardware": str(run_info.get("hardware") or NOT_MEASURED),
        "num_processes": str(run_info.get("num_processes") or 1),
        "augmentation": str(run_info.get("augmentation") or NOT_MEASURED),
        "mixed_precision": str(run_info.get("mixed_precision") or NOT_MEASURED),
        "software": ", ".join(f"{name} {version}" for name, version in versions.items()),
        "training_time": training_time,
        "command": redact_hub_token(run_info["command"]) if run_info.get("command") else None,
        "hyperparameter_rows": _table_rows(hyperparameters),
        "epoch_rows": _table_rows(epochs),
        "train_loss_rows": "" if epochs else _table_rows(train_losses),
        "evaluated": evaluated.get(training_args.get("eval_strategy", "epoch"), "during training"),
        "ema_decay": run_info.get("ema_decay"),
    }


def card_fields(
    folder: str | os.PathLike, repo_id: str | None = None, stock_vit_repo_id: str | None = None, revision: str = "main"
) -> dict[str, Any]:
    """What the model card of a training output folder says, every figure read from the folder's files: a figure the
    folder lacks reads "not measured", and a flag that is None, False or "" leaves out its paragraph of the card."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise RunFolderError(f"{folder} is not a folder. Pass the output folder of scripts/train.py.")
    model_type = _read_json(folder, "config.json").get("model_type")
    if model_type != ViTD2LConfig.model_type:
        raise RunFolderError(
            f"{folder} has no config.json of a vit_d2l model (model_type={model_type!r}). Pass the output folder of "
            "scripts/train.py."
        )
    config = ViTD2LConfig.from_pretrained(folder)
    run_info = _read_json(folder, "run_info.json")
    all_results = _read_json(folder, "all_results.json")
    eval_results = _read_json(folder, "eval_results.json")
    log_history = _read_json(folder, "trainer_state.json").get("log_history", [])
    processor = _read_json(folder, "preprocessor_config.json")
    test = get_test_accuracy(eval_results, all_results, run_info)
    dataset_id = run_info.get("dataset_id")
    dataset_name = "Fashion-MNIST" if dataset_id == HUB_DATASET_ID else dataset_id or run_info.get("dataset")
    data_source = dataset_name or NOT_MEASURED
    if dataset_id:
        data_source = f"[{dataset_name}](https://huggingface.co/datasets/{dataset_id})"
    normalisation = "no normalisation"
    if processor.get("do_normalize"):
        normalisation = f"normalised with mean {processor.get('image_mean')} and std {processor.get('image_std')}"
    flops = flops_per_image(config)
    repo_id = repo_id or "YOUR_USER/vit-d2l"
    return {
        "metadata": _card_data(repo_id, dataset_id, dataset_name or "local image folder", test[0] if test else None),
        "config": config,
        "repo_id": repo_id,
        "revision": revision,
        "model_name": repo_id.split("/")[-1],
        "stock_vit_repo_id": stock_vit_repo_id,
        "training_data": dataset_name or "a local image folder",
        "data_source": data_source,
        "confusion_matrix": os.path.isfile(os.path.join(folder, "confusion_matrix.png")),
        "pooled": "`<cls>` token" if config.pooling == "cls" else "mean of the patch tokens",
        "num_tokens": config.num_patches + 1,
        "parameters": f"{count_parameters(folder):,}",
        "forward_flops": _flops(flops),
        "training_flops": _flops(3 * flops),
        "differs_from_book": config.pooling != "cls" or config.init_style != "d2l" or bool(config.drop_path_rate),
        "test_time_flip": bool(config.test_time_flip),
        "normalisation": normalisation,
        "training_curves": os.path.isfile(os.path.join(folder, "training_curves.png")),
        **_test_figures(eval_results, all_results, run_info),
        **_run_figures(run_info, all_results, log_history),
    }


def build_model_card(
    folder: str | os.PathLike, repo_id: str | None = None, stock_vit_repo_id: str | None = None, revision: str = "main"
) -> ModelCard:
    """The Hub model card of a training output folder: `templates/model_card.md` filled with `card_fields`; `revision`
    is the commit its `trust_remote_code=True` snippets pin, `stock_vit_repo_id` the stock-ViT export's repository."""
    fields = card_fields(folder, repo_id, stock_vit_repo_id, revision)
    return ModelCard.from_template(fields["metadata"], template_path=str(TEMPLATES / "model_card.md"), **fields)


# ------------------------------------------------------------------------------------------------- Staging and pushing


def check_folder_complete(folder: str | os.PathLike) -> None:
    """Raise `HubPushError` unless the folder works once published: beyond what loading needs (`check_model_folder`),
    a Hub user without this package needs an `auto_map` entry for each Auto class, the code files and safetensors."""
    folder = os.fspath(folder)
    try:
        auto_map = check_model_folder(folder).get("auto_map") or {}
    except ModelLoadError as err:
        problems = [str(err)]
    else:
        auto_map.update(_read_json(folder, "preprocessor_config.json").get("auto_map") or {})
        problems = [f"config.json has no auto_map entry for {key}" for key in AUTO_CLASSES if key not in auto_map]
        for name in sorted({reference.split(".")[0] + ".py" for reference in auto_map.values()}):
            if not os.path.isfile(os.path.join(folder, name)):
                problems.append(f"code file {name} is missing")
        if not glob.glob(os.path.join(glob.escape(folder), "model*.safetensors")):
            problems.append(
                "it has no model*.safetensors weights (pickled weights such as pytorch_model.bin are not uploaded)"
            )
    if problems:
        raise HubPushError(
            f"{folder} is not a complete model folder: {'; '.join(p.rstrip('.') for p in problems)}. Save it with "
            "save_pretrained (model and image processor) after `import hf_vit_d2l`, as scripts/train.py does."
        )


def upload_names(folder: str) -> list[str]:
    """The top-level regular files of `folder` that go into an upload: no folders (checkpoints), hidden files,
    README.md (the card replaces it) or pickles. A symbolic link, which could point anywhere (~/.ssh, /etc), is
    refused with a `HubPushError` rather than skipped, so that nothing the user meant to upload silently goes missing.
    """
    names = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or name == "README.md":
            continue
        if os.path.islink(path):
            raise HubPushError(
                f"{path} is a symbolic link (to {os.readlink(path)}); only regular files inside the model folder are "
                "uploaded. Replace the link by a copy of its file, or move it out of the folder. Nothing was changed."
            )
        if os.path.isfile(path) and not name.lower().endswith(PICKLE_SUFFIXES):
            names.append(name)
    return names


def known_tokens(folder: str) -> set[str]:
    """Hub tokens that must not be uploaded: the one huggingface_hub uses (HF_TOKEN or `hf auth login`'s) and any
    `--hub_token` the folder's run_info.json recorded (a run from before commands were redacted)."""
    run_info = _read_json(folder, "run_info.json")
    tokens = {get_token(), (run_info.get("training_args") or {}).get("hub_token")}
    for _, value in HUB_TOKEN_ARGUMENT.findall(str(run_info.get("command") or "")):
        tokens.add(value.strip("'\""))
    # A token is 8+ letters, digits, "_" or "-" (hf_...). That leaves out masks such as TrainingArguments.to_dict's
    # "<HUB_TOKEN>" or "***", and short values, which would match weight bytes by chance.
    return {t for t in tokens if isinstance(t, str) and re.fullmatch(r"[\w-]{8,}", t) and "redacted" not in t.lower()}


def _refuse_token_holders(staging: str, folder: str, secrets: list[bytes]) -> None:
    for name in sorted(os.listdir(staging)):
        path = os.path.join(staging, name)
        if os.path.getsize(path) == 0:  # mmap cannot map an empty file
            continue
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if any(data.find(secret) != -1 for secret in secrets):
                source = "its model card" if name == "README.md" else os.path.join(folder, name)
                raise HubPushError(
                    f"{source} holds a Hugging Face token (the one in use, or a --hub_token that run_info.json "
                    "recorded); nothing was staged. Remove the token from the file, and revoke it if it was shared."
                )


def stage_for_upload(
    folder: str | os.PathLike,
    out_dir: str | os.PathLike,
    repo_id: str | None = None,
    stock_vit_repo_id: str | None = None,
    revision: str = "main",
) -> str:
    """Write the folder that would be uploaded to `out_dir` (a new or empty folder), crash-safely; return its path.

    It holds the folder's `upload_names` and README.md = the card, built from the staged copy so that it describes
    exactly what is uploaded. A file holding a `known_tokens` value stops the staging with a `HubPushError`.
    """
    folder, out_dir = os.path.abspath(os.fspath(folder)), os.path.abspath(os.fspath(out_dir))
    check_folder_complete(folder)
    names = upload_names(folder)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise HubPushError(f"{out_dir} already exists and is not an empty folder; choose a new output folder.")
    if out_dir == folder or out_dir.startswith(folder + os.sep):
        raise HubPushError(f"The output folder {out_dir} must lie outside the model folder {folder}.")
    secrets = [token.encode() for token in known_tokens(folder)]

    def write(staging: str) -> None:
        for name in names:
            shutil.copyfile(os.path.join(folder, name), os.path.join(staging, name), follow_symlinks=False)
        build_model_card(staging, repo_id, stock_vit_repo_id, revision).save(os.path.join(staging, "README.md"))
        _refuse_token_holders(staging, folder, secrets)

    return save_folder_atomically(out_dir, write, last="README.md")


def stage_stock_vit(folder: str | os.PathLike, out_dir: str | os.PathLike, repo_id: str, source_repo_id: str) -> str:
    """The stock-transformers export (`hf_vit_d2l.to_transformers_vit`, RGB input) with a stock processor and card."""
    if os.path.exists(out_dir):
        raise HubPushError(f"{out_dir} already exists; choose a new output folder for the stock-ViT export.")
    model = ViTD2LForImageClassification.from_pretrained(folder).eval()
    stock = to_transformers_vit(model)
    embeddings = stock.vit.embeddings.patch_embeddings
    conv = embeddings.projection
    if conv.in_channels == 1:
        # The pipeline gives RGB images, which stock ViT's processor does not turn back to grayscale. A convolution
        # is linear, so conv(w, luma(RGB)) = conv(w * luma_weights, RGB): the original's logits on gray images.
        rgb = torch.nn.Conv2d(3, conv.out_channels, conv.kernel_size, stride=conv.stride)  # stock ViT's has a bias
        with torch.no_grad():
            rgb.weight.copy_(conv.weight * torch.tensor(LUMA, dtype=conv.weight.dtype).view(1, 3, 1, 1))
            rgb.bias.copy_(conv.bias)
        embeddings.projection = rgb
        embeddings.num_channels = stock.config.num_channels = 3
    size = model.config.image_size
    processor = ViTImageProcessorPil(size={"height": size, "width": size}, do_normalize=False, do_convert_rgb=True)
    dataset_id = _read_json(os.fspath(folder), "run_info.json").get("dataset_id")
    card = ModelCard.from_template(
        _card_data(repo_id, dataset_id, dataset_id, accuracy=None),
        template_path=str(TEMPLATES / "stock_vit_card.md"),
        repo_id=repo_id,
        source_repo_id=source_repo_id,
        luma=", ".join(f"{weight:g}" for weight in LUMA),
        image_size=size,
        dataset_name="Fashion-MNIST" if dataset_id == HUB_DATASET_ID else dataset_id or "its training images",
    )

    def write(staging: str) -> None:
        stock.save_pretrained(staging)
        processor.save_pretrained(staging)
        card.save(os.path.join(staging, "README.md"))

    return save_folder_atomically(out_dir, write)


def check_hub_ready() -> str:
    """The token, or a `HubPushError` when uploading cannot work: offline mode, no token, or the Hub unreachable."""
    if constants.HF_HUB_OFFLINE:
        problem = "HF_HUB_OFFLINE is set, so nothing can be uploaded. Unset it on a machine online"
    elif not (token := get_token()):
        problem = "No Hugging Face token found. Run `hf auth login` (or set HF_TOKEN)"
    elif not hub_available():
        problem = f"Cannot reach the Hub at {constants.ENDPOINT}. Check the network (or HF_ENDPOINT)"
    else:
        return token
    raise HubPushError(
        f"{problem}, or use --dry_run OUT_DIR to write the folder that would be uploaded. Nothing was changed."
    )


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    stock_vit_repo_id: str | None = None,
    dry_run_dir: str | os.PathLike | None = None,
) -> dict[str, str | None]:
    """Stage the folder with its card (`stage_for_upload`) and upload it, or with `dry_run_dir` only write it there.

    A second commit sets the card's pinned revision to the first commit's hash. Returns the staged folders (`"staged"`,
    `"stock_vit_staged"`) of a dry run, or the repository URLs (`"url"`, `"stock_vit_url"`) and `"commit"`.
    """
    folder = os.path.abspath(os.fspath(folder))
    if not repo_id or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise HubPushError(f"--repo_id must look like USER/NAME, got {repo_id!r}.")
    if stock_vit_repo_id is not None and (stock_vit_repo_id.count("/") != 1 or stock_vit_repo_id == repo_id):
        raise HubPushError(f"--also_stock_vit_repo must be a second USER/NAME repository, got {stock_vit_repo_id!r}.")
    check_folder_complete(folder)
    try:  # strict: weights that do not fit config.json are refused before anything is staged
        load_model(folder, model_class=ViTD2LForImageClassification)
    except ModelLoadError as err:
        raise HubPushError(str(err)) from None
    pooling = _read_json(folder, "config.json").get("pooling", "cls")
    if stock_vit_repo_id is not None and pooling != "cls":
        raise HubPushError(
            f"--also_stock_vit_repo: this model uses pooling={pooling!r}, which stock transformers ViT cannot express "
            "(it classifies the <cls> token only). Drop --also_stock_vit_repo for this model."
        )
    token = None if dry_run_dir is not None else check_hub_ready()
    with tempfile.TemporaryDirectory(prefix="vit_d2l_push_") as tmp:
        staged = stage_for_upload(folder, dry_run_dir or os.path.join(tmp, "model"), repo_id, stock_vit_repo_id)
        stock = None
        if stock_vit_repo_id:
            stock = stage_stock_vit(folder, staged + "-stock-vit", stock_vit_repo_id, repo_id)
        if dry_run_dir is not None:
            return {"staged": staged, "stock_vit_staged": stock}
        api = huggingface_hub.HfApi(token=token)  # looked up at call time, so that tests can stand in for it
        result = {"url": str(api.create_repo(repo_id, private=private, exist_ok=True))}
        commit = api.upload_folder(repo_id=repo_id, folder_path=staged, commit_message="Upload ViT (d2l) and its card")
        result["commit"] = commit.oid
        card = build_model_card(staged, repo_id, stock_vit_repo_id, revision=commit.oid)
        message = f"Model card: pin the code of commit {commit.oid[:8]} in the usage snippets"
        api.upload_file(
            path_or_fileobj=str(card).encode(), path_in_repo="README.md", repo_id=repo_id, commit_message=message
        )
        if stock:
            result["stock_vit_url"] = str(api.create_repo(stock_vit_repo_id, private=private, exist_ok=True))
            api.upload_folder(
                repo_id=stock_vit_repo_id, folder_path=stock, commit_message="Upload the stock ViT export"
            )
    return result


@dataclass
class PushArguments:
    folder: str = field(metadata={"help": "Trained model folder (output of scripts/train.py)."})
    repo_id: str = field(metadata={"help": "Hub repository, USER/NAME."})
    private: bool = field(default=False, metadata={"help": "Create the repository as private."})
    dry_run: str | None = field(
        default=None, metadata={"help": "Write the folder that would be uploaded to this new folder; upload nothing."}
    )
    also_stock_vit_repo: str | None = field(
        default=None,
        metadata={"help": "Also upload the stock transformers ViT export (hf_vit_d2l.to_transformers_vit) here."},
    )
    space_repo_id: str | None = field(
        default=None,
        metadata={
            "help": "Also upload a Gradio Space (USER/NAME) running the demo on the pushed commit; with "
            "--dry_run, its folder is written to DIR-space."
        },
    )

    def __post_init__(self):
        if not Path(self.folder).is_dir():
            raise ValueError(f"{self.folder}: no such folder. Pass the output folder of scripts/train.py.")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The folder is positional on the command line: `push_to_hub.py FOLDER --repo_id ...`.
    if argv and not argv[0].startswith("-"):
        argv = ["--folder", argv[0], *argv[1:]]
    try:
        (args,) = HfArgumentParser(PushArguments).parse_args_into_dataclasses(args=argv)
        result = push_to_hub(args.folder, args.repo_id, args.private, args.also_stock_vit_repo, args.dry_run)
    except (HubPushError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"Dry run: wrote the folder that would be uploaded to {result['staged']}")
        if result.get("stock_vit_staged"):
            print(f"Dry run: wrote the stock-ViT export to {result['stock_vit_staged']}")
    else:
        print(f"Uploaded to {result['url']}")
        if result.get("stock_vit_url"):
            print(f"Uploaded the stock-ViT export to {result['stock_vit_url']}")
    if args.space_repo_id:
        push_space(args, result)
    return 0


def push_space(args: PushArguments, result: dict) -> None:
    """The demo as a Gradio Space, loading the model at the commit just pushed (`main` in a dry run)."""
    from . import demo

    if args.dry_run:
        space = demo.write_space_folder(args.dry_run.rstrip("/") + "-space", args.repo_id, "main")
        print(f"Dry run: wrote the Space folder to {space}")
        return
    api = huggingface_hub.HfApi()
    api.create_repo(args.space_repo_id, repo_type="space", space_sdk="gradio", exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        space = demo.write_space_folder(os.path.join(tmp, "space"), args.repo_id, result["commit"])
        api.upload_folder(folder_path=space, repo_id=args.space_repo_id, repo_type="space")
    print(f"Uploaded the Space to https://huggingface.co/spaces/{args.space_repo_id}")


__all__ = [
    "main",
    "PushArguments",
    "HubPushError",
    "RunFolderError",
    "build_model_card",
    "card_fields",
    "check_folder_complete",
    "flops_per_image",
    "push_to_hub",
    "redact_hub_token",
    "stage_for_upload",
    "upload_names",
]


if __name__ == "__main__":
    sys.exit(main())
