"""Classify image files with a trained model: labels and scores, per file.

    python -m hf_vit_d2l.predict shirt.png boots.jpg --model outputs/vit_d2l_fashion_mnist
    python -m hf_vit_d2l.predict my_images/ --model USER/vit-d2l-fashion-mnist --top_k 3 --json > predictions.json

Arguments are image files (PNG, JPEG, or anything else PIL reads, of any mode and size) and folders, which are
walked recursively for image files (by extension). Images are batch-processed through the model's own image
processor with a progress bar on stderr. A file that cannot be read gets an error line (or an `"error"` entry with
--json) and the others still run; the exit code is 1 when any file failed, 2 when nothing could run at all (no
model, no images).

`--model` is a local folder or a Hub id. Models of this package load with the installed code; add
`--trust_remote_code` to run the code files stored with the model instead (needed for Hub models of other types).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class PredictError(RuntimeError):
    """Nothing can be predicted (the model cannot be loaded, or no image was given)."""


@dataclass
class Prediction:
    """The result for one file: `labels`/`scores` (best first), or `error`."""

    path: str
    labels: list[str] | None = None
    scores: list[float] | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"file": self.path, "error": self.error}
        return {
            "file": self.path,
            "predictions": [{"label": lab, "score": s} for lab, s in zip(self.labels, self.scores, strict=True)],
        }


def collect_images(paths: Iterable[str]) -> tuple[list[str], list[Prediction]]:
    """Files to classify (folders walked recursively, sorted), and errors for paths that do not exist."""
    files: list[str] = []
    errors: list[Prediction] = []
    for path in paths:
        if os.path.isdir(path):
            found = []
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [
                    os.path.join(root, n)
                    for n in sorted(names)
                    if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")
                ]
            if not found:
                errors.append(Prediction(path, error=f"folder has no image files ({', '.join(IMAGE_EXTENSIONS)})"))
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            errors.append(Prediction(path, error="no such file or folder"))
    return files, errors


def load_classifier(model: str, trust_remote_code: bool = False, device: str | None = None):
    """(model in eval mode, image processor) from a folder or Hub id, with a clear error when that fails."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    import hf_vit_d2l  # noqa: F401  (registers vit_d2l with the Auto classes)

    if os.path.isfile(model):
        raise PredictError(f"--model {model} is a file; pass the model folder (with config.json) or a Hub id.")
    looks_local = os.path.isabs(model) or model.startswith(".") or model.count("/") > 1 or os.path.isdir(model)
    if looks_local and not os.path.isdir(model):
        raise PredictError(f"--model {model}: no such folder. Pass a trained model folder or a Hub id USER/NAME.")
    if os.path.isdir(model) and not os.path.isfile(os.path.join(model, "config.json")):
        raise PredictError(f"--model {model} has no config.json: it is not a saved model folder.")
    try:
        classifier = AutoModelForImageClassification.from_pretrained(model, trust_remote_code=trust_remote_code)
        processor = AutoImageProcessor.from_pretrained(model, trust_remote_code=trust_remote_code, backend="pil")
    except (OSError, ValueError, KeyError) as err:
        where = "folder" if os.path.isdir(model) else "Hub model (offline? set HF_HUB_OFFLINE=0 and check network)"
        raise PredictError(f"Could not load the {where} {model!r}: {err}") from err
    classifier.eval()
    if device:
        classifier.to(device)
    return classifier, processor


def _open_image(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()  # read the pixels now: truncated files fail here, not in the batch
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            return image.copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        return err


def _probabilities(model, processor, images: list, device):
    import torch

    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(pixel_values=pixel_values.to(device)).logits.float().softmax(-1).cpu()


def predict_files(
    files: list[str],
    model,
    processor,
    top_k: int = 3,
    batch_size: int = 64,
    progress: bool = True,
) -> Iterator[Prediction]:
    """Predictions for `files`, in order, `batch_size` images per forward pass."""
    import torch
    from tqdm.auto import tqdm

    top_k = max(1, min(top_k, model.config.num_labels))
    device = next(model.parameters()).device
    bar = tqdm(total=len(files), unit="img", desc="predict", disable=not progress, file=sys.stderr)
    try:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            results: dict[int, Prediction] = {}
            images, positions = [], []
            for i, path in enumerate(chunk):
                image = _open_image(path)
                if isinstance(image, Exception):
                    results[i] = Prediction(path, error=f"cannot read image: {image}")
                else:
                    images.append(image)
                    positions.append(i)
            if images:
                try:
                    probs = _probabilities(model, processor, images, device)
                except Exception:
                    # One odd image (e.g. a channel count the model cannot take) spoils the batch: redo it image
                    # by image so that only that file gets the error.
                    probs = []
                    for i, image in zip(positions, images, strict=True):
                        try:
                            probs.append(_probabilities(model, processor, [image], device))
                        except Exception as err:
                            results[i] = Prediction(chunk[i], error=f"cannot classify image: {err}")
                    positions = [i for i in positions if i not in results]
                    probs = torch.cat(probs) if probs else None
                if probs is not None:
                    scores, indices = probs.topk(top_k, dim=-1)
                    for row, i in enumerate(positions):
                        results[i] = Prediction(
                            chunk[i],
                            labels=[model.config.id2label[int(j)] for j in indices[row]],
                            scores=[float(s) for s in scores[row]],
                        )
            for i in range(len(chunk)):
                yield results[i]
            bar.update(len(chunk))
    finally:
        bar.close()


def _format(prediction: Prediction) -> str:
    if prediction.error is not None:
        return f"{prediction.path}: ERROR {prediction.error}"
    ranked = ", ".join(f"{lab} ({s:.3f})" for lab, s in zip(prediction.labels, prediction.scores, strict=True))
    return f"{prediction.path}: {ranked}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hf_vit_d2l.predict",
        description="Classify image files and folders with a trained ViT (d2l) model.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders")
    parser.add_argument("--model", required=True, help="trained model folder or Hub id USER/NAME")
    parser.add_argument("--top_k", type=int, default=3, help="labels per image (default 3)")
    parser.add_argument("--batch_size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--json", action="store_true", help="print one JSON list of results instead of text")
    parser.add_argument("--trust_remote_code", action="store_true", help="run the code files stored with the model")
    parser.add_argument("--device", default=None, help="torch device, e.g. cuda (default: cpu)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top_k < 1:
        print(f"error: --top_k must be >= 1, got {args.top_k}", file=sys.stderr)
        return 2
    if args.batch_size < 1:
        print(f"error: --batch_size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return 2
    files, missing = collect_images(args.images)
    if not files:
        for prediction in missing:
            print(f"error: {prediction.path}: {prediction.error}", file=sys.stderr)
        print("error: no image files to classify.", file=sys.stderr)
        return 2
    try:
        model, processor = load_classifier(args.model, args.trust_remote_code, args.device)
    except PredictError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    failed = len(missing)
    results = []
    for prediction in missing:
        results.append(prediction.to_dict())
        if not args.json:
            print(_format(prediction), file=sys.stderr)
    show_bar = not args.no_progress and len(files) > 1
    for prediction in predict_files(files, model, processor, args.top_k, args.batch_size, progress=show_bar):
        failed += prediction.error is not None
        if args.json:
            results.append(prediction.to_dict())
        else:
            print(_format(prediction), file=sys.stderr if prediction.error else sys.stdout, flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    if failed:
        print(f"{failed} of {len(files) + len(missing)} inputs failed.", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
