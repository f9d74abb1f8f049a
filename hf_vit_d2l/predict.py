"""Classify image files with a trained model: labels and scores, per file.

    python -m hf_vit_d2l.predict shirt.png boots.jpg --model outputs/vit_d2l_fashion_mnist
    python -m hf_vit_d2l.predict my_images/ --model USER/vit-d2l-fashion-mnist --top_k 3 --json > predictions.json

Folders are walked recursively for image files (by extension). Each image goes to the model's own image processor
as the PIL image it is, so `predict`, the `pipeline` and the processor give the same answer. A file that cannot be
used (not an image, truncated, over PIL's decompression-bomb limit, not a regular file: a FIFO is never opened) gets
its own error line and the others still run. Exit code 1: some file failed; 2: nothing could run (no images, or a
model that cannot load).
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from transformers.image_utils import load_image

from .attention_maps import save_attention_figure
from .demo import open_image  # shared with the demo, whose file a Space ships alone
from .evaluation import ModelLoadError, load_model_and_processor
from .image_processing_vit_d2l import conversion_loses_information
from .utils import check_writable_folder

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass
class Prediction:
    """The result for one file: `labels`/`scores` (best first), or `error`; `note` when its conversion loses data."""

    path: str
    labels: list[str] | None = None
    scores: list[float] | None = None
    error: str | None = None
    note: str | None = None

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"file": self.path, "error": self.error}
        ranked = [{"label": label, "score": s} for label, s in zip(self.labels, self.scores, strict=True)]
        return {"file": self.path, "predictions": ranked}


def file_kind(path: str) -> str:
    """What `path` is: "file", "folder", or why it cannot be read as an image. Only `os.stat` looks at it: opening a
    FIFO blocks until something writes to it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "broken symbolic link" if os.path.islink(path) else "no such file or folder"
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    kind = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}.get(stat.S_IFMT(mode), "a device")
    return f"not a regular file ({kind}); skipped"


def collect_images(paths: Iterable[str]) -> tuple[list[str], list[Prediction]]:
    """Regular files to classify (folders walked recursively, sorted), and an error for each path that does not
    exist or is not a regular file."""
    files: list[str] = []
    errors: list[Prediction] = []
    for path in paths:
        found = [path]
        if file_kind(path) == "folder":
            found = []
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)]
            if not found:
                errors.append(Prediction(path, error=f"folder has no image files ({', '.join(IMAGE_EXTENSIONS)})"))
        for name in found:
            kind = file_kind(name)
            if kind == "file":
                files.append(name)
            else:
                errors.append(Prediction(name, error=kind))
    return files, errors


def predict_files(
    files: list[str], model, processor, top_k: int = 3, batch_size: int = 64, progress: bool = True
) -> Iterator[Prediction]:
    """Predictions for `files`, in order, `batch_size` images per forward pass; one failed file never stops it."""
    import torch
    from tqdm.auto import tqdm

    top_k = max(1, min(top_k, model.config.num_labels))
    device = next(model.parameters()).device

    def probabilities(images: list) -> torch.Tensor:
        with torch.no_grad():
            pixel_values = processor(images=images, return_tensors="pt")["pixel_values"].to(device)
            return model(pixel_values=pixel_values).logits.float().softmax(-1).cpu()

    for start in tqdm(range(0, len(files), batch_size), disable=not progress, file=sys.stderr, desc="predict"):
        results: dict[str, Prediction] = {}
        images: dict[str, Image.Image] = {}
        for path in files[start : start + batch_size]:
            try:
                images[path] = open_image(path)
            except (OSError, ValueError) as err:
                results[path] = Prediction(path, error=str(err))
        try:
            probs = dict(zip(images, probabilities(list(images.values())), strict=True)) if images else {}
        except Exception:
            # One odd image (e.g. a channel count the model cannot take) spoils the batch: redo it image by image so
            # that only that file gets the error.
            probs = {}
            for path, image in images.items():
                try:
                    probs[path] = probabilities([image])[0]
                except Exception as err:
                    results[path] = Prediction(path, error=f"cannot classify the image: {err}")
        for path, p in probs.items():
            scores, indices = p.topk(top_k)
            labels = [model.config.id2label[int(i)] for i in indices]
            note = conversion_loses_information(images[path])
            results[path] = Prediction(path, labels, [float(s) for s in scores], note=note)
        yield from (results[path] for path in files[start : start + batch_size])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hf_vit_d2l.predict", description="Classify image files and folders with a trained ViT (d2l)."
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders")
    parser.add_argument("--model", required=True, help="trained model folder or Hub id USER/NAME")
    parser.add_argument("--revision", default="main", help="a Hub model's branch, tag or commit sha (default main)")
    parser.add_argument("--top_k", type=int, default=3, help="labels per image (default 3)")
    parser.add_argument("--batch_size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--json", action="store_true", help="print one JSON list of results instead of text")
    parser.add_argument("--trust_remote_code", action="store_true", help="run the code files stored with the model")
    parser.add_argument("--device", default=None, help="torch device, e.g. cuda (default: cpu)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--attention_maps", metavar="DIR", help="also write a PNG per image: input, rollout, top 3")
    guard = f"raise PIL's decompression-bomb guard (PIL.Image.MAX_IMAGE_PIXELS, default {Image.MAX_IMAGE_PIXELS:,})"
    parser.add_argument("--max_image_pixels", type=int, help=guard)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("top_k", "batch_size", "max_image_pixels"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            print(f"error: --{name} must be >= 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    if args.max_image_pixels:
        Image.MAX_IMAGE_PIXELS = args.max_image_pixels
    files, missing = collect_images(args.images)
    if not files:
        for prediction in missing:
            print(f"error: {prediction.path}: {prediction.error}", file=sys.stderr)
        print("error: no image files to classify.", file=sys.stderr)
        return 2
    try:
        if args.attention_maps:
            check_writable_folder(args.attention_maps, "--attention_maps")
        model, processor = load_model_and_processor(
            args.model, args.trust_remote_code, args.device, revision=args.revision
        )
    except (ValueError, ModelLoadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    results, notes = list(missing), []
    show_bar = not args.no_progress and len(files) > 1
    for index, prediction in enumerate(
        predict_files(files, model, processor, args.top_k, args.batch_size, progress=show_bar)
    ):
        results.append(prediction)
        if args.attention_maps and prediction.error is None:
            figure = os.path.join(args.attention_maps, f"{index:04d}-{Path(prediction.path).stem}.png")
            save_attention_figure(load_image(prediction.path), model, processor, figure)
        notes += [f"{prediction.path}: {prediction.note}"] if prediction.note else []
        if not args.json:
            if prediction.error:
                print(f"{prediction.path}: ERROR {prediction.error}", file=sys.stderr, flush=True)
            else:
                ranked = ", ".join(f"{k} ({s:.3f})" for k, s in zip(prediction.labels, prediction.scores, strict=True))
                print(f"{prediction.path}: {ranked}", flush=True)
    for prediction in missing:
        print(f"{prediction.path}: ERROR {prediction.error}", file=sys.stderr)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    if notes:
        print(
            f"note: converting {len(notes)} image(s) to RGB, as the pipeline does, lost information (first: "
            f"{notes[0]}); the model sees 8-bit images without transparency.",
            file=sys.stderr,
        )
    failed = sum(r.error is not None for r in results)
    if failed:
        print(f"{failed} of {len(results)} inputs failed.", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
