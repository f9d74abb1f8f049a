"""ViTD2LImageProcessor: the book's transform (bilinear resize to 96, scale to [0, 1]) on every kind of input."""

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, pipeline
from transformers.image_utils import load_image

import hf_vit_d2l  # noqa: F401  (registers the Auto classes)
from hf_vit_d2l import ViTD2LImageProcessor
from hf_vit_d2l.image_processing_vit_d2l import conversion_loses_information

TEST_IMAGES = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
FIXTURE = Path(__file__).parent / "fixtures" / "tiny_v0_1_0"


@pytest.fixture(scope="module")
def fashion_images() -> np.ndarray:
    """The first 8 real Fashion-MNIST test images (uint8, 28x28); a synthetic stand-in only if the file is absent."""
    if os.path.exists(TEST_IMAGES):
        with gzip.open(TEST_IMAGES) as f:
            header = f.read(16)
            assert int.from_bytes(header[:4], "big") == 2051  # IDX magic for ubyte images
            return np.frombuffer(f.read(8 * 28 * 28), np.uint8).reshape(8, 28, 28).copy()
    pytest.skip(f"{TEST_IMAGES} not found (Debian package dataset-fashion-mnist)")


def book_transform(array: np.ndarray, size: int = 96) -> np.ndarray:
    """The book's `transforms.Resize((96, 96))` + `ToTensor()` on a PIL "L" image, without torchvision."""
    resized = Image.fromarray(array, mode="L").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)[None] / 255.0


@pytest.fixture(scope="module")
def processor():
    return ViTD2LImageProcessor()


def test_defaults(processor):
    assert processor.size == {"height": 96, "width": 96}
    assert processor.do_resize
    assert processor.do_rescale
    assert not processor.do_normalize
    assert processor.num_channels == 1
    assert processor.resample == Image.Resampling.BILINEAR


def test_equals_the_book_transform_on_real_fashion_mnist(processor, fashion_images):
    images = [Image.fromarray(a, mode="L") for a in fashion_images]
    out = processor(images, return_tensors="pt").pixel_values
    assert out.shape == (8, 1, 96, 96)
    assert out.dtype == torch.float32
    assert out.min().item() >= 0.0
    assert out.max().item() <= 1.0
    assert out.max().item() > 0.5
    expected = np.stack([book_transform(a) for a in fashion_images])
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "I", "F", "CMYK", "YCbCr"])
def test_pil_modes_reach_one_channel(processor, fashion_images, mode):
    gray = Image.fromarray(fashion_images[0], mode="L")
    image = gray.convert(mode)
    out = processor(image, return_tensors="pt").pixel_values
    assert out.shape == (1, 1, 96, 96)
    # Gray round-trips through these modes exactly (YCbCr's luma can be 1 level off).
    atol = 1.5 / 255 if mode == "YCbCr" else 1e-6
    np.testing.assert_allclose(out[0].numpy(), book_transform(fashion_images[0]), atol=atol, rtol=0)


def luma(r, g, b):
    """PIL's integer ITU-R 601-2 luma (`convert("L")`), computed by hand."""
    return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16


def palette_image(transparent: bool) -> Image.Image:
    image = Image.new("P", (40, 30), 1)
    image.putpalette([0, 0, 0, 10, 200, 30])
    if transparent:
        image.info["transparency"] = 1
    return image


# mode -> (a uniform 40x30 image, its grey level by hand: RGB conversion as `load_image`, then luma)
PIL_MODES = {
    "1": (lambda: Image.new("1", (40, 30), 1), 255),
    "L": (lambda: Image.new("L", (40, 30), 100), 100),
    "LA": (lambda: Image.new("LA", (40, 30), (100, 50)), 100),  # alpha dropped
    "P": (lambda: palette_image(False), luma(10, 200, 30)),
    "P transparent": (lambda: palette_image(True), luma(10, 200, 30)),  # transparency dropped
    "RGB": (lambda: Image.new("RGB", (40, 30), (10, 200, 30)), luma(10, 200, 30)),
    "RGBA": (lambda: Image.new("RGBA", (40, 30), (255, 0, 0, 128)), luma(255, 0, 0)),  # alpha dropped
    # CMYK -> RGB: each colour times the black key, (255 - C)(255 - K) / 255
    "CMYK": (
        lambda: Image.new("CMYK", (40, 30), (10, 20, 30, 40)),
        luma(*(round((255 - c) * (255 - 40) / 255) for c in (10, 20, 30))),
    ),
    "I;16": (lambda: Image.new("I;16", (40, 30), 40000), 255),  # clipped at 255
    "I;16 8-bit range": (lambda: Image.new("I;16", (40, 30), 200), 200),
    "I": (lambda: Image.new("I", (40, 30), 300), 255),
    "F": (lambda: Image.new("F", (40, 30), 130.7), 130),  # clipped and cut to whole numbers
}


@pytest.mark.parametrize("mode", sorted(PIL_MODES))
def test_pil_rule_is_the_pipelines_rgb_conversion_then_luma(processor, mode):
    make_image, grey = PIL_MODES[mode]
    image = make_image()
    out = processor(image, return_tensors="pt").pixel_values
    assert out.shape == (1, 1, 96, 96)
    torch.testing.assert_close(out, torch.full_like(out, grey / 255), rtol=0, atol=1e-6)
    for same in (image.convert("RGB"), load_image(image)):
        torch.testing.assert_close(processor(same, return_tensors="pt").pixel_values, out, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["RGBA", "I;16", "P transparent", "CMYK"])
def test_pipeline_and_processor_give_the_same_probabilities(mode):
    classify = pipeline("image-classification", model=str(FIXTURE), device="cpu")
    model = hf_vit_d2l.ViTD2LForImageClassification.from_pretrained(FIXTURE).eval()
    processor = ViTD2LImageProcessor.from_pretrained(FIXTURE)
    image = PIL_MODES[mode][0]()
    results = classify(image, top_k=10)
    with torch.no_grad():
        probs = model(**processor(image, return_tensors="pt")).logits.softmax(-1)[0]
    assert len(results) == 10, results
    for result in results:
        assert abs(result["score"] - probs[model.config.label2id[result["label"]]].item()) < 1e-6, result


@pytest.mark.parametrize(
    ("mode", "lost"),
    [
        ("RGBA", "transparency"),
        ("LA", "transparency"),
        ("P transparent", "transparency"),
        ("I;16", "16-bit"),
        ("I", "32-bit"),
        ("F", "float"),
        ("RGB", None),
        ("L", None),
        ("P", None),
        ("CMYK", None),
        ("I;16 8-bit range", None),
    ],
)
def test_conversion_loses_information_says_what(mode, lost):
    said = conversion_loses_information(PIL_MODES[mode][0]())
    assert said is None if lost is None else lost in said
    assert conversion_loses_information(Image.new("RGBA", (4, 4), (1, 2, 3, 255))) is None  # opaque: nothing lost


def test_transparency_rgba_pil_drops_alpha_rgba_array_composites_on_black(processor):
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere ...
    rgba[:14, :, 3] = 255  # ... but only the top half opaque
    out = processor(Image.fromarray(rgba, mode="RGBA"), return_tensors="pt").pixel_values[0, 0]
    assert out.min().item() == pytest.approx(1.0)  # PIL: as `pipeline`, the alpha channel is dropped
    out_array = processor(rgba, return_tensors="pt").pixel_values[0, 0]  # arrays: composited on black
    assert out_array[:40].min().item() == pytest.approx(1.0)
    assert out_array[56:].max().item() == 0.0


def test_rgb_is_converted_with_pil_luma(processor):
    rgb = np.zeros((28, 28, 3), np.uint8)
    rgb[..., 0] = 200  # pure red
    out = processor(Image.fromarray(rgb, mode="RGB"), return_tensors="pt").pixel_values
    expected = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32)[0, 0] / 255
    assert out.shape == (1, 1, 96, 96)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)
    out_array = processor(rgb, return_tensors="pt").pixel_values
    np.testing.assert_allclose(out_array.numpy(), expected, atol=1 / 255 + 1e-6)


@pytest.mark.parametrize(
    "layout",
    ["HW", "HW1", "1HW", "HW3", "3HW", "torch HW", "torch 1HW", "torch 3HW", "batch BHW1", "list"],
)
def test_arrays_and_tensors_in_any_layout(processor, fashion_images, layout):
    a = fashion_images[0]
    inputs = {
        "HW": a,
        "HW1": a[..., None],
        "1HW": a[None],
        "HW3": np.stack([a] * 3, -1),
        "3HW": np.stack([a] * 3, 0),
        "torch HW": torch.from_numpy(a),
        "torch 1HW": torch.from_numpy(a)[None],
        "torch 3HW": torch.from_numpy(np.stack([a] * 3, 0)),
        "batch BHW1": np.stack([a[..., None], fashion_images[1][..., None]]),
        "list": [a, torch.from_numpy(fashion_images[1]), Image.fromarray(fashion_images[2])],
    }[layout]
    out = processor(inputs, return_tensors="pt").pixel_values
    count = {"batch BHW1": 2, "list": 3}.get(layout, 1)
    assert out.shape == (count, 1, 96, 96)
    expected = np.stack([book_transform(x) for x in fashion_images[:count]])
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, "bf16"])
def test_float_input_in_unit_range_is_not_rescaled_twice(processor, fashion_images, dtype):
    a = fashion_images[0].astype(np.float32) / 255
    x = torch.from_numpy(a).bfloat16() if dtype == "bf16" else a.astype(dtype)
    out = processor(x, return_tensors="pt").pixel_values
    assert out.shape == (1, 1, 96, 96)
    # Float images are resized in float (not rounded to 8 bits): within one grey level of the uint8 path.
    np.testing.assert_allclose(out[0].numpy(), book_transform(fashion_images[0]), atol=1.5 / 255, rtol=0)
    assert out.max().item() <= 1.0 + 1e-6


def test_float_input_on_0_255_scale(processor, fashion_images):
    with pytest.warns(UserWarning, match="read on the 0-255 scale"):
        out = processor(fashion_images[0].astype(np.float32), return_tensors="pt").pixel_values
    np.testing.assert_allclose(out[0].numpy(), book_transform(fashion_images[0]), atol=1.5 / 255, rtol=0)


def test_three_channel_processor_and_size(fashion_images):
    processor = ViTD2LImageProcessor(num_channels=3, size={"height": 32, "width": 32})
    out = processor(Image.fromarray(fashion_images[0]), return_tensors="pt").pixel_values
    assert out.shape == (1, 3, 32, 32)
    torch.testing.assert_close(out[:, 0], out[:, 2])
    with pytest.raises(ValueError, match="num_channels must be 1"):
        ViTD2LImageProcessor(num_channels=2)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (None, "got NoneType"),
        (5, "got int"),
        ([], "No images given"),
        (np.zeros((28, 28, 7), np.uint8), r"shape \(28, 28, 7\)"),
        (np.zeros((2, 2, 28, 28, 1), np.uint8), r"shape \(2, 2, 28, 28, 1\)"),
        (np.zeros((5, 28, 28, 7), np.uint8), r"shape \(28, 28, 7\)"),
        (np.array([["a"]], dtype=object), "not a numeric image"),
        ("/nonexistent/picture.png", "Could not read the image from '/nonexistent/picture.png'"),
    ],
)
def test_unreadable_input_is_a_clear_value_error(processor, bad, message):
    with pytest.raises(ValueError, match=message):
        processor(bad, return_tensors="pt")


def test_unreadable_file_is_a_clear_value_error(processor, tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="Could not read the image"):
        processor(str(path), return_tensors="pt")


def test_image_file_path_is_read(processor, fashion_images, tmp_path):
    path = tmp_path / "shoe.png"
    Image.fromarray(fashion_images[0]).save(path)
    out = processor(str(path), return_tensors="pt").pixel_values
    np.testing.assert_allclose(out[0].numpy(), book_transform(fashion_images[0]), atol=1e-6, rtol=0)


def test_save_and_auto_image_processor_resolve_to_our_class(tmp_path, fashion_images):
    ViTD2LImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert stored["image_processor_type"] == "ViTD2LImageProcessor"
    assert stored["num_channels"] == 1
    assert stored["do_normalize"] is False
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is ViTD2LImageProcessor
    assert loaded.size == {"height": 32, "width": 32}
    out = loaded(Image.fromarray(fashion_images[0]).convert("RGB"), return_tensors="pt").pixel_values
    assert out.shape == (1, 1, 32, 32)
    np.testing.assert_allclose(out[0].numpy(), book_transform(fashion_images[0], 32), atol=1e-6, rtol=0)


def test_processor_output_feeds_the_model(processor, fashion_images):
    model = hf_vit_d2l.ViTD2LForImageClassification(
        hf_vit_d2l.ViTD2LConfig(hidden_size=32, num_attention_heads=4, intermediate_size=37)
    ).eval()
    with torch.no_grad():
        logits = model(**processor(list(fashion_images[:3]), return_tensors="pt")).logits
    assert logits.shape == (3, 10)
    assert torch.isfinite(logits).all()


def test_process_image_called_directly_handles_every_layout(processor, fashion_images):
    """`ImageClassificationCollator`'s tensor backend calls `process_image` per image, skipping the list handling."""
    a = fashion_images[0]
    for image in (a, a[..., None], a[None], torch.from_numpy(a), Image.fromarray(a).convert("RGBA")):
        out = processor.process_image(image)
        assert out.shape == (1, 28, 28)
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out[0], a)
