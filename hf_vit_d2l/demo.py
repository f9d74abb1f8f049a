#!/usr/bin/env python
"""Try a saved model in the browser: a Gradio app on http://127.0.0.1:7860 (upload or draw an image; top labels,
the model's input, attention rollout), and the folder of a Hugging Face Space that runs it on a pushed model.

    pip install -e ".[demo]"
    python scripts/demo.py --model runs/quick           # or: vit-d2l-demo, python -m hf_vit_d2l.demo
    python scripts/demo.py --model USER/NAME --trust_remote_code --port 7861   # a pushed model, by Hub id

`write_space_folder` copies this file, `attention_maps.py` and `image_processing_vit_d2l.py` next to a short `app.py`:
in a Space they import only torch, numpy, PIL, matplotlib, transformers and gradio.
"""

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers import AutoImageProcessor, AutoModelForImageClassification
from transformers.image_utils import load_image

try:  # in this package
    from .attention_maps import compute_attention_maps, enlarge, model_view, overlay, top_labels
    from .image_processing_vit_d2l import conversion_loses_information
except ImportError:  # in a Space, the files sit next to app.py
    from attention_maps import compute_attention_maps, enlarge, model_view, overlay, top_labels
    from image_processing_vit_d2l import conversion_loses_information


def load_model(model: str, revision: str | None = None, trust_remote_code: bool = False):
    """`(model, image_processor)` from a saved folder or a Hub id; a one-line `ValueError` when that fails.

    With this package installed, loading is strict (`evaluation.load_model_and_processor`); in a Space, which ships
    this file without the package, transformers loads it.
    """
    options = {"revision": revision or "main", "trust_remote_code": trust_remote_code}
    try:
        from .evaluation import ModelLoadError, load_model_and_processor
    except ImportError:
        loaded = AutoModelForImageClassification.from_pretrained(model, **options).eval()
        return loaded, AutoImageProcessor.from_pretrained(model, **options)
    try:
        return load_model_and_processor(model, **options)
    except ModelLoadError as error:
        raise ValueError(str(error)) from None


def fashion_mnist_examples(folder: str) -> list[str]:
    """Write the first test image of each class as a PNG in `folder`; [] when the data is absent."""
    from .data import DEFAULT_DATA_DIR, find_fashion_mnist_files, read_idx

    files = find_fashion_mnist_files(DEFAULT_DATA_DIR)
    if files is None:
        return []
    images, labels = (read_idx(path) for path in files["test"])
    os.makedirs(folder, exist_ok=True)
    paths = []
    for label in range(10):
        index = np.flatnonzero(labels == label)[0]
        paths.append(os.path.join(folder, f"test_{index:04d}_class{label}.png"))
        Image.fromarray(images[index]).save(paths[-1])
    return paths


def open_image(path: str) -> Image.Image:
    """The file's first frame, fully read, or an `OSError`/`ValueError` whose one-line message says what to do.
    `predict` reads files with it too; it lives here because a Space ships this file without the package."""
    try:
        with Image.open(path) as image:
            image.load()  # read the pixels now: truncated files fail here, not in the batch
            return image.copy()
    except Image.DecompressionBombError:
        limit = 2 * Image.MAX_IMAGE_PIXELS
        raise ValueError(
            f"image is over PIL's decompression-bomb limit of {limit:,} pixels (2 x PIL.Image.MAX_IMAGE_PIXELS); if "
            "you trust the file, raise the limit with --max_image_pixels N"
        ) from None
    except PermissionError:
        raise PermissionError("permission denied: the file is not readable by this user") from None
    except Image.UnidentifiedImageError:
        if os.path.getsize(path) == 0:
            raise ValueError("the file is empty (0 bytes)") from None
        raise ValueError(
            "not an image file that PIL can read (an unknown format, or cut short in its header)"
        ) from None
    except (OSError, SyntaxError, ValueError) as err:  # PIL's decoders raise these for damaged data
        raise ValueError(f"cannot read the image ({err}); the file may be truncated or damaged") from None


@torch.no_grad()
def classify(image, model, processor, top_k: int = 5):
    """One image (a file path or a PIL image) -> ({label: probability}, model input, attention overlay, note).
    Converted with transformers' `load_image`, as `pipeline` does, so both give the same probabilities."""
    if image is None:
        return None, None, None, ""
    notes = []
    if isinstance(image, (str, os.PathLike)):
        image = open_image(image)
    if lost := conversion_loses_information(image):
        notes.append(f"The {image.mode} image was converted to RGB, as `pipeline` does, losing its {lost}.")
    image = load_image(image)
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    scores = dict(top_labels(model, pixel_values, top_k))
    maps = compute_attention_maps(model, pixel_values)
    view = model_view(pixel_values[0])
    gray = np.asarray(image.convert("L"))
    if np.median(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])) > 127:  # a light border
        notes.append(
            "**This looks like a dark item on a light background.** Fashion-MNIST items are light on black, so the "
            "model is often wrong on such images: press *Invert colours*. The model card reports the accuracy "
            "measured on inverted test images."
        )
    return scores, enlarge(view), enlarge(overlay(view, maps.rollout[0].numpy())), "\n\n".join(notes)


def read_upload(value) -> Image.Image:
    """An upload as Gradio's unread file data (`preprocess=False`), read by `open_image`: a file it cannot use becomes
    a `gr.Error` showing predict's line, where Gradio's own reading would only say that the app failed."""
    import gradio as gr

    name = value.get("orig_name") or os.path.basename(value["path"])
    try:
        return open_image(value["path"])
    except (OSError, ValueError) as error:
        raise gr.Error(f"{name}: {error}") from None


def build_demo(model, processor, examples=(), top_k: int = 5, title: str | None = None):
    """The Gradio `Blocks` app of a loaded model and its processor; `examples` are image file paths."""
    import gradio as gr

    size = model.config.image_size
    mean_pooling = getattr(model.config, "pooling", "cls") == "mean"
    pooling = "the mean of its patch tokens" if mean_pooling else "its `<cls>` token"
    query = "all patches (averaged)" if mean_pooling else "the `<cls>` token"
    box = {"height": 300, "sources": ["upload", "clipboard"]}
    shown = {"interactive": False, "height": 300, "buttons": ["download"]}
    with gr.Blocks(title=title or "Fashion-MNIST ViT demo", analytics_enabled=False) as demo:
        gr.Markdown(
            f"## {title or 'Fashion-MNIST Vision Transformer'}\n"
            "Upload a picture of a garment, or draw one (*Draw*, then the brush on the left). The model sees it as a "
            f"{size}×{size} {'grayscale' if model.config.num_channels == 1 else 'colour'} image and classifies it "
            f"from {pooling}."
        )
        with gr.Row():
            with gr.Column():
                with gr.Tab("Upload"):
                    # The file as uploaded (image_mode=None), read like `pipeline` reads files, in `classify`.
                    upload = gr.Image(type="filepath", image_mode=None, format="png", **box, elem_id="upload")
                    invert_button = gr.Button("Invert colours", size="sm")
                with gr.Tab("Draw"):
                    sketch = gr.Sketchpad(
                        type="pil",
                        image_mode="RGBA",
                        brush=gr.Brush(colors=["#000000"], default_color="#000000", color_mode="fixed"),
                        canvas_size=(280, 280),
                        fixed_canvas=True,
                        layers=False,
                        transforms=(),
                        label="Drawing (the model gets it inverted: white on black)",
                        elem_id="sketch",
                    )
                if examples:
                    gr.Examples(examples=list(examples), inputs=upload, label="Fashion-MNIST test images")
            with gr.Column():
                labels = gr.Label(num_top_classes=top_k, label="Prediction", elem_id="prediction")
                note = gr.Markdown(elem_id="note")
                with gr.Row():
                    seen = gr.Image(label=f"What the model sees ({size}×{size})", **shown, elem_id="model-input")
                    rollout = gr.Image(label="Attention rollout", **shown, elem_id="attention")
                gr.Markdown(
                    f"Attention rollout (Abnar & Zuidema, 2020): bright patches are where the attention of {query} "
                    f"ends up after all {model.config.num_hidden_layers} blocks."
                )
        outputs = [labels, seen, rollout, note]

        def from_upload(value):
            return classify(None if value is None else read_upload(value), model, processor, top_k)

        def inverted(value):
            return None if value is None else ImageOps.invert(load_image(read_upload(value)))

        def from_sketch(value):
            composite = None if value is None else value.get("composite")
            if composite is None:
                return None, None, None, ""
            # Strokes on a white (or transparent) canvas -> Fashion-MNIST's light item on black.
            white = Image.new("RGBA", composite.size, "white")
            drawing = ImageOps.invert(Image.alpha_composite(white, composite.convert("RGBA")).convert("L"))
            return classify(drawing if np.asarray(drawing).any() else None, model, processor, top_k)

        upload.change(from_upload, upload, outputs, api_name="classify", preprocess=False)
        sketch.change(from_sketch, sketch, outputs, api_name="classify_drawing", trigger_mode="always_last")
        invert_button.click(inverted, upload, upload, api_name=False, preprocess=False)
    return demo


def launch_kwargs(port: int | None = None) -> dict:
    """`Blocks.launch` arguments for an offline, local-only demo (no share link, fonts from the system)."""
    import gradio as gr

    font = ["ui-sans-serif", "system-ui", "sans-serif"]
    theme = gr.themes.Default(font=font, font_mono=["ui-monospace", "monospace"])
    # Small inputs (28x28 PNGs) fill the upload box with their pixels visible instead of sitting as a dot in it.
    css = "#upload img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }"
    return {"server_name": "127.0.0.1", "server_port": port, "theme": theme, "css": css, "footer_links": ["api"]}


SPACE_APP = '''"""Gradio demo of {model_repo_id} (a Vision Transformer from Dive into Deep Learning, hf-vit-d2l)."""

import glob
import os

from demo import build_demo, launch_kwargs, load_model

MODEL = os.environ.get("VIT_D2L_MODEL", {model_repo_id!r})
REVISION = None if "VIT_D2L_MODEL" in os.environ else {revision!r}  # the pushed commit this Space was built for
EXAMPLES = sorted(glob.glob("examples/*.png"))  # Fashion-MNIST test images, when the folder was written with them

model, processor = load_model(MODEL, revision=REVISION, trust_remote_code=True)
demo = build_demo(model, processor, examples=EXAMPLES, title={title!r})

if __name__ == "__main__":
    demo.launch(**dict(launch_kwargs(), server_name="0.0.0.0"))
'''


def write_space_folder(out_dir: str, model_repo_id: str, revision: str, image_size: int = 28) -> str:
    """Write a Hub Space (`app.py`, `requirements.txt`, `README.md` from `templates/space_card.md`, the demo code,
    example images) to `out_dir`. Its app loads `model_repo_id` at `revision` with `trust_remote_code=True` (env
    `VIT_D2L_MODEL`: another model)."""
    import gradio
    import transformers

    from . import attention_maps, image_processing_vit_d2l
    from .utils import save_folder_atomically

    fields = {"model_repo_id": model_repo_id, "revision": revision, "image_size": image_size}
    fields["title"] = f"{model_repo_id.split('/')[-1]} demo"
    requirements = [f"transformers=={transformers.__version__}", f"gradio=={gradio.__version__}", "torch", "numpy"]
    requirements += ["pillow", "matplotlib"]

    files = {"app.py": SPACE_APP.format(**fields), "requirements.txt": "\n".join(requirements) + "\n"}
    card = Path(__file__).parent / "templates" / "space_card.md"
    files["README.md"] = card.read_text(encoding="utf-8").format(gradio_version=gradio.__version__, **fields)

    def write(folder):
        for name, text in files.items():
            Path(folder, name).write_text(text, encoding="utf-8")
        for path in (__file__, attention_maps.__file__, image_processing_vit_d2l.__file__):
            shutil.copyfile(path, os.path.join(folder, os.path.basename(path)))
        fashion_mnist_examples(os.path.join(folder, "examples"))

    return save_folder_atomically(out_dir, write, last="app.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="A folder saved by scripts/train.py, or a Hub id.")
    parser.add_argument("--port", type=int, default=None, help="Port on 127.0.0.1 (default: 7860 or the next free).")
    parser.add_argument("--top_k", type=int, default=5, help="How many labels to show.")
    parser.add_argument("--revision", default="main", help="A Hub model's branch, tag or commit sha.")
    parser.add_argument(
        "--trust_remote_code", action="store_true", help="Run the code files stored with the model (its auto_map)."
    )
    guard = f"Raise PIL's decompression-bomb guard (PIL.Image.MAX_IMAGE_PIXELS, default {Image.MAX_IMAGE_PIXELS:,})."
    parser.add_argument("--max_image_pixels", type=int, help=guard)
    args = parser.parse_args()
    try:
        if importlib.util.find_spec("gradio") is None:
            raise ValueError('the demo needs gradio: pip install -e ".[demo]"')
        if args.max_image_pixels is not None and args.max_image_pixels < 1:
            raise ValueError(f"--max_image_pixels must be >= 1, got {args.max_image_pixels}")
        model, processor = load_model(args.model, args.revision, args.trust_remote_code)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if args.max_image_pixels:
        Image.MAX_IMAGE_PIXELS = args.max_image_pixels
    examples = fashion_mnist_examples(os.path.join(tempfile.gettempdir(), "hf_vit_d2l_demo_examples"))
    title = f"{os.path.basename(os.path.normpath(args.model))}: Fashion-MNIST ViT"
    build_demo(model, processor, examples, top_k=args.top_k, title=title).launch(**launch_kwargs(args.port))


if __name__ == "__main__":
    main()
