"""Push a trained folder to the Hugging Face Hub with its generated model card.

`stage_for_upload` writes exactly the folder that is uploaded (model, config with full `auto_map`, the three code
files, image processor, run JSONs, plots, README.md = the card); `push_to_hub` checks that the Hub can be reached
and a token exists *before* it touches anything, then uploads the staged folder with `HfApi.create_repo` and
`HfApi.upload_folder`. The training folder itself is only read, never modified.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from typing import Any
from urllib.parse import urlparse

from .model_card import OUT_OF_DOMAIN_FILE, build_model_card, measure_out_of_domain

CODE_FILES = ("configuration_vit_d2l.py", "modeling_vit_d2l.py", "image_processing_vit_d2l.py")
REQUIRED_AUTO_MAP = {
    "AutoConfig": "configuration_vit_d2l.ViTD2LConfig",
    "AutoModel": "modeling_vit_d2l.ViTD2LModel",
    "AutoModelForImageClassification": "modeling_vit_d2l.ViTD2LForImageClassification",
}
# Top-level files of a training folder that are not part of the published model.
_SKIPPED_PREFIXES = (".",)
_SKIPPED_SUFFIXES = (".lock", ".tmp", ".partial")


class HubPushError(RuntimeError):
    """The push cannot go ahead (offline, no token, incomplete folder); nothing was changed."""


def check_folder_complete(folder: str | os.PathLike) -> list[str]:
    """Problems that would make the published folder unusable (empty list when complete)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return [f"{folder} is not a folder"]
    problems = []
    names = set(os.listdir(folder))
    if not any(n.startswith("model") and n.endswith(".safetensors") for n in names):
        problems.append("no model weights (model.safetensors)")
    if "model.safetensors.index.json" in names:
        with open(os.path.join(folder, "model.safetensors.index.json"), encoding="utf-8") as f:
            shards = set(json.load(f).get("weight_map", {}).values())
        problems += [f"weight shard {s} listed in the index is missing" for s in sorted(shards - names)]
    if "config.json" not in names:
        problems.append("no config.json")
    else:
        try:
            with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
                auto_map = json.load(f).get("auto_map") or {}
        except json.JSONDecodeError as err:
            problems.append(f"config.json is not valid JSON ({err})")
            auto_map = None
        if auto_map is not None:
            for key, value in REQUIRED_AUTO_MAP.items():
                if auto_map.get(key) != value:
                    problems.append(f"config.json auto_map[{key!r}] is {auto_map.get(key)!r}, expected {value!r}")
    problems += [f"code file {name} is missing" for name in CODE_FILES if name not in names]
    if "preprocessor_config.json" not in names:
        problems.append("no preprocessor_config.json (image processor)")
    return problems


def _fail_if_incomplete(folder: str) -> None:
    problems = check_folder_complete(folder)
    if problems:
        raise HubPushError(
            f"{folder} is not a complete model folder: "
            + "; ".join(problems)
            + ". Save it with ViTD2LForImageClassification.save_pretrained and ViTD2LImageProcessor.save_pretrained "
            "after `import hf_vit_d2l` (scripts/train.py does both)."
        )


def _files_to_publish(folder: str) -> list[str]:
    """Top-level regular files of the folder (no checkpoint-*/runs/ subfolders, hidden or temporary files)."""
    names = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not os.path.isfile(path) or name.startswith(_SKIPPED_PREFIXES) or name.endswith(_SKIPPED_SUFFIXES):
            continue
        if name == "README.md":  # replaced by the generated card
            continue
        names.append(name)
    return names


def stage_for_upload(
    folder: str | os.PathLike,
    out_dir: str | os.PathLike,
    repo_id: str | None = None,
    stock_vit_repo_id: str | None = None,
    out_of_domain: dict[str, Any] | None = None,
) -> str:
    """Write the folder that would be uploaded to `out_dir`, atomically (a temporary folder, then a rename).

    `out_dir` must not exist yet, or be an empty folder, so that nothing is ever overwritten. Returns its path.
    """
    folder = os.path.abspath(os.fspath(folder))
    out_dir = os.path.abspath(os.fspath(out_dir))
    _fail_if_incomplete(folder)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise HubPushError(f"{out_dir} already exists and is not an empty folder; choose a new output folder.")
    if out_dir == folder or out_dir.startswith(folder + os.sep):
        raise HubPushError(f"The output folder {out_dir} must lie outside the model folder {folder}.")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.staging-", dir=parent)
    try:
        for name in _files_to_publish(folder):
            shutil.copy2(os.path.join(folder, name), os.path.join(staging, name))
        if out_of_domain is not None:
            with open(os.path.join(staging, OUT_OF_DOMAIN_FILE), "w", encoding="utf-8") as f:
                json.dump(out_of_domain, f, indent=2)
        # Built from the staged copy, so the card describes exactly what is uploaded.
        card = build_model_card(staging, repo_id=repo_id, stock_vit_repo_id=stock_vit_repo_id)
        card.save(os.path.join(staging, "README.md"))
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty, checked above
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


# PIL's "L" conversion weights (ITU-R 601-2 luma), as the package's image processor uses.
_LUMA = (0.299, 0.587, 0.114)


def rgb_input_stock_vit(stock):
    """Make a 1-channel stock ViT take RGB input by folding the grayscale conversion into its patch embedding.

    The `pipeline` always converts images to RGB, and transformers' stock image processor does not convert them
    back to grayscale, so a 1-channel stock ViT fails on every pipeline call. A convolution is linear in its
    input, so conv(w, luma(RGB)) = conv(w * luma_weights, RGB): the returned model gives, on any RGB image, the
    logits the original gives on that image's grayscale version (exactly for gray images, whose R = G = B, since
    the weights sum to 1; for colour images the package's processor rounds the grayscale image to 8 bits first,
    a difference below 0.5/255 per pixel).
    """
    import torch
    from torch import nn

    embeddings = stock.vit.embeddings.patch_embeddings
    conv = embeddings.projection
    if conv.in_channels != 1:
        return stock
    rgb = nn.Conv2d(3, conv.out_channels, kernel_size=conv.kernel_size, stride=conv.stride, bias=conv.bias is not None)
    with torch.no_grad():
        rgb.weight.copy_(conv.weight * torch.tensor(_LUMA, dtype=conv.weight.dtype).view(1, 3, 1, 1))
        if conv.bias is not None:
            rgb.bias.copy_(conv.bias)
    embeddings.projection = rgb.to(conv.weight.device)
    embeddings.num_channels = 3
    stock.config.num_channels = 3
    return stock


def stage_stock_vit(folder: str | os.PathLike, out_dir: str | os.PathLike, repo_id: str, source_repo_id: str) -> str:
    """The stock-transformers export (`hf_vit_d2l.to_transformers_vit`) with a stock image processor and a card."""
    from transformers import ViTImageProcessorPil

    from . import ViTD2LForImageClassification

    try:
        from . import to_transformers_vit
    except ImportError as err:
        raise HubPushError(
            "hf_vit_d2l.to_transformers_vit is not available in this installation; push without --also_stock_vit_repo."
        ) from err
    folder = os.fspath(folder)
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir):
        raise HubPushError(f"{out_dir} already exists; choose a new output folder for the stock-ViT export.")
    model = ViTD2LForImageClassification.from_pretrained(folder).eval()
    stock = rgb_input_stock_vit(to_transformers_vit(model))
    config = model.config
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.staging-", dir=parent)
    try:
        stock.save_pretrained(staging)
        ViTImageProcessorPil(
            size={"height": config.image_size, "width": config.image_size},
            do_normalize=False,
            do_rescale=True,
            do_convert_rgb=True,  # grayscale files become R = G = B, which the RGB patch embedding maps back
        ).save_pretrained(staging)
        card = "\n".join(
            [
                "---",
                "library_name: transformers",
                "license: apache-2.0",
                "pipeline_tag: image-classification",
                "tags: [image-classification, vision, vit, d2l, fashion-mnist]",
                "datasets: [zalando-datasets/fashion_mnist]",
                "---",
                "",
                f"# {repo_id.split('/')[-1]}",
                "",
                f"The model of [{source_repo_id}](https://huggingface.co/{source_repo_id}) (the Vision Transformer of "
                "*Dive into Deep Learning*) converted to a stock `transformers.ViTForImageClassification` with "
                "`hf_vit_d2l.to_transformers_vit`: no remote code is needed. The grayscale conversion is folded into "
                "the patch embedding (its weights times the luma weights 0.299, 0.587, 0.114), so the model takes "
                "RGB input, as the `pipeline` gives it; on grayscale images its logits equal the original's in eval "
                f"mode. See [{source_repo_id}](https://huggingface.co/{source_repo_id}) for its training, "
                "evaluation and limits.",
                "",
                f"Input: {config.image_size}x{config.image_size} RGB (the image processor resizes and converts any "
                "image); the domain is Fashion-MNIST's, a white clothing item on black.",
                "",
                "```python",
                "from PIL import Image",
                "from transformers import pipeline",
                "",
                f'classifier = pipeline("image-classification", model="{repo_id}")',
                'print(classifier(Image.open("my_image.png"), top_k=3))',
                "```",
                "",
            ]
        )
        with open(os.path.join(staging, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def check_hub_ready(timeout: float = 3.0) -> str:
    """Raise `HubPushError` unless uploading can work: not offline, a token, and the endpoint reachable.

    Returns the token. The reachability probe is one TCP connection with a short timeout, so an unreachable Hub
    fails in seconds instead of after huggingface_hub's retries.
    """
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise HubPushError(
            "HF_HUB_OFFLINE is set, so nothing can be uploaded. Unset it (and HF_DATASETS_OFFLINE) on a machine with "
            "internet access, or use --dry_run OUT_DIR to write the folder that would be uploaded. Nothing was "
            "changed."
        )
    token = get_token()
    if not token:
        raise HubPushError(
            "No Hugging Face token found. Run `hf auth login` (or set HF_TOKEN to a token with write access), or use "
            "--dry_run OUT_DIR to write the folder that would be uploaded. Nothing was changed."
        )
    endpoint = urlparse(constants.ENDPOINT)
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise HubPushError(
            f"Cannot reach the Hub at {constants.ENDPOINT} ({err}). Check the network (or HF_ENDPOINT), or use "
            "--dry_run OUT_DIR to write the folder that would be uploaded. Nothing was changed."
        ) from err
    return token


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    stock_vit_repo_id: str | None = None,
    dry_run_dir: str | os.PathLike | None = None,
    measure_ood: bool = True,
    data_dir: str = "/usr/share/datasets/fashion-mnist",
    ood_samples: int = 1000,
    commit_message: str | None = None,
) -> dict[str, Any]:
    """Stage the folder with its card and upload it (or, with `dry_run_dir`, only write the staged folder).

    Returns `{"staged": path or None, "url": repo URL or None, "stock_vit_url": ... }`.
    """
    folder = os.path.abspath(os.fspath(folder))
    if not repo_id or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise HubPushError(f"--repo_id must look like USER/NAME, got {repo_id!r}.")
    if stock_vit_repo_id is not None and (stock_vit_repo_id.count("/") != 1 or stock_vit_repo_id == repo_id):
        raise HubPushError(f"--also_stock_vit_repo must be a second USER/NAME repository, got {stock_vit_repo_id!r}.")
    _fail_if_incomplete(folder)
    if stock_vit_repo_id is not None:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
            pooling = json.load(handle).get("pooling", "cls")
        if pooling != "cls":
            raise HubPushError(
                f"--also_stock_vit_repo: this model uses pooling={pooling!r}, which stock transformers ViT cannot "
                "express (it classifies the <cls> token only). Drop --also_stock_vit_repo for this model."
            )
    token = None if dry_run_dir is not None else check_hub_ready()

    out_of_domain = None
    if measure_ood and not os.path.isfile(os.path.join(folder, OUT_OF_DOMAIN_FILE)):
        try:
            out_of_domain = measure_out_of_domain(folder, data_dir=data_dir, num_samples=ood_samples)
        except FileNotFoundError as err:
            print(f"Out-of-domain probe skipped: {err}")

    if dry_run_dir is not None:
        staged = stage_for_upload(folder, dry_run_dir, repo_id, stock_vit_repo_id, out_of_domain)
        stock_staged = None
        if stock_vit_repo_id:
            stock_staged = stage_stock_vit(folder, staged + "-stock-vit", stock_vit_repo_id, repo_id)
        return {"staged": staged, "stock_vit_staged": stock_staged, "url": None, "stock_vit_url": None}

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    result: dict[str, Any] = {"staged": None, "stock_vit_staged": None}
    with tempfile.TemporaryDirectory(prefix="vit_d2l_push_") as tmp:
        staged = stage_for_upload(folder, os.path.join(tmp, "model"), repo_id, stock_vit_repo_id, out_of_domain)
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=staged,
            commit_message=commit_message or "Upload ViT (d2l) trained on Fashion-MNIST with its model card",
        )
        result["url"] = str(url)
        result["stock_vit_url"] = None
        if stock_vit_repo_id:
            stock_staged = stage_stock_vit(folder, os.path.join(tmp, "stock"), stock_vit_repo_id, repo_id)
            stock_url = api.create_repo(stock_vit_repo_id, private=private, exist_ok=True)
            api.upload_folder(
                repo_id=stock_vit_repo_id,
                folder_path=stock_staged,
                commit_message="Upload the stock transformers ViT export of the d2l ViT",
            )
            result["stock_vit_url"] = str(stock_url)
    return result


__all__ = [
    "CODE_FILES",
    "HubPushError",
    "check_folder_complete",
    "check_hub_ready",
    "push_to_hub",
    "rgb_input_stock_vit",
    "stage_for_upload",
    "stage_stock_vit",
]
