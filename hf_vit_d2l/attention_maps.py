"""Where the model looks: `<cls>` attention per block and head, and attention rollout (Abnar & Zuidema, 2020,
https://arxiv.org/abs/2005.00928). A `pooling="mean"` model never reads its `<cls>` token: there the maps are the
flow into each patch averaged over all patch queries. Only torch, numpy, PIL and matplotlib are imported, so this
file also runs in a Hub Space.
"""

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


@dataclass
class AttentionMaps:
    """`block_attentions`: (batch, blocks, heads, grid, grid), the query's attention to each patch per block and head.
    `rollout`: (batch, height, width), the rollout upsampled to the model's input; each map sums to 1.
    `query`: `"<cls>"` or `"mean of patches"` (the row of the attention matrices that the maps read)."""

    block_attentions: torch.Tensor
    rollout: torch.Tensor
    query: str


def attention_rollout(attentions, query: str = "<cls>") -> torch.Tensor:
    """Rollout of per-layer weights [(batch, heads, tokens, tokens), ...] with token 0 the `<cls>` token: the flow
    (batch, tokens - 1) from the query (`"<cls>"` or `"mean of patches"`) into each patch, summing to 1."""
    rollout = None
    for weights in attentions:
        mixed = weights.float().mean(dim=1)  # (B, T, T): heads averaged
        mixed = mixed + torch.eye(mixed.shape[-1], dtype=mixed.dtype, device=mixed.device)  # skip connection
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed if rollout is None else mixed @ rollout  # later layers act on earlier layers' mixing
    flow = rollout[:, 0, 1:] if query == "<cls>" else rollout[:, 1:, 1:].mean(dim=1)
    return flow / flow.sum(dim=-1, keepdim=True)


@torch.no_grad()
def compute_attention_maps(model, pixel_values: torch.Tensor) -> AttentionMaps:
    """`AttentionMaps` of a `ViTD2LForImageClassification` (or `ViTD2LModel`) for a batch of `pixel_values`; with
    `test_time_flip`, those of the image itself, not of its mirror."""
    query = "mean of patches" if getattr(model.config, "pooling", "cls") == "mean" else "<cls>"
    pixel_values = pixel_values.to(model.device)
    attentions = model(pixel_values=pixel_values, output_attentions=True).attentions
    batch, height, width = pixel_values.shape[0], pixel_values.shape[-2], pixel_values.shape[-1]
    grid = round((attentions[0].shape[-1] - 1) ** 0.5)
    # (B, heads, T, T) per block -> (B, blocks, heads, T - 1): the query's attention to the patches.
    rows = [w.float()[:, :, 0, 1:] if query == "<cls>" else w.float()[:, :, 1:, 1:].mean(dim=2) for w in attentions]
    per_block = torch.stack(rows, dim=1)
    flow = attention_rollout(attentions, query).view(batch, 1, grid, grid)
    upsampled = torch.nn.functional.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False)
    upsampled = upsampled[:, 0] / upsampled.sum(dim=(-1, -2))[:, 0, None, None]
    return AttentionMaps(per_block.reshape(batch, len(attentions), -1, grid, grid).cpu(), upsampled.cpu(), query)


def model_view(pixel_values: torch.Tensor) -> np.ndarray:
    """One (C, H, W) image of `pixel_values` for display: (H, W) or (H, W, 3) in [0, 1], normalised ones stretched."""
    array = pixel_values.detach().float().cpu().numpy()
    array = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 1:
        array = (array - low) / max(high - low, 1e-8)
    return np.clip(array, 0, 1)


def overlay(view: np.ndarray, heat: np.ndarray, alpha: float = 0.55, colormap: str = "inferno") -> np.ndarray:
    """The model's view in gray with `heat` (stretched to its own range) blended on top: (H, W, 3) uint8."""
    import matplotlib

    gray = view if view.ndim == 2 else view.mean(axis=-1)
    heat = (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-12)
    colours = matplotlib.colormaps[colormap](heat)[..., :3]
    blended = (1 - alpha) * np.repeat(gray[..., None], 3, axis=-1) + alpha * colours
    return (np.clip(blended, 0, 1) * 255).astype(np.uint8)


def enlarge(array: np.ndarray, size: int = 280) -> Image.Image:
    """An (H, W) float image or (H, W, 3) uint8 image, upscaled without blurring so its patches stay visible."""
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(array).resize((size, size), Image.Resampling.NEAREST)


@torch.no_grad()
def top_labels(model, pixel_values: torch.Tensor, top_k: int = 3) -> list[tuple[str, float]]:
    """The `top_k` (label, probability) pairs of the first image of `pixel_values`, highest first."""
    probabilities = model(pixel_values=pixel_values.to(model.device)).logits.float().softmax(dim=-1)[0]
    values, indices = probabilities.topk(min(top_k, probabilities.numel()))
    return [(model.config.id2label[int(i)], float(v)) for v, i in zip(values, indices)]


def save_attention_figure(image, model, processor, path, top_k: int = 3) -> list[tuple[str, float]]:
    """Write a PNG of one image (what the processor accepts): the model's input, the rollout overlay, and the `top_k`
    labels with probabilities. Returns the (label, probability) pairs."""
    from matplotlib.figure import Figure  # no pyplot: no display or global backend needed

    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    maps = compute_attention_maps(model, pixel_values)
    labels = top_labels(model, pixel_values, top_k)
    view = model_view(pixel_values[0])
    figure = Figure(figsize=(9, 3.2))
    left, middle, right = figure.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 1.3]})
    left.imshow(view, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    left.set_title(f"model input ({view.shape[1]}x{view.shape[0]})", fontsize=10)
    middle.imshow(overlay(view, maps.rollout[0].numpy()), interpolation="nearest")
    peak = float(maps.rollout[0].max() / maps.rollout[0].min().clamp_min(1e-12))
    middle.set_title(f"rollout (brightest = {peak:.1f}x darkest)", fontsize=10)
    for axis in (left, middle):
        axis.axis("off")
    names, probabilities = [name for name, _ in labels][::-1], [p for _, p in labels][::-1]
    right.barh(names, probabilities, color="#4c72b0")
    for row, p in enumerate(probabilities):
        right.text(p + 0.02, row, f"{p:.3f}", va="center", fontsize=9)
    right.set_xlim(0, 1.2)
    right.set_xticks([0, 0.5, 1])
    right.set_title(f"top-{len(labels)} labels", fontsize=10)
    right.spines[["top", "right"]].set_visible(False)
    source = "the <cls> token" if maps.query == "<cls>" else "all patches, averaged (mean-pooling model)"
    figure.suptitle(f"Attention rollout from {source}", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return labels


__all__ = ["AttentionMaps", "attention_rollout", "compute_attention_maps", "save_attention_figure"]
