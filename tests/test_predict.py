"""`python -m hf_vit_d2l.predict`: files of any mode and size, folders, bad files and bad model folders, --json."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from hf_vit_d2l import FASHION_MNIST_LABELS, ViTD2LConfig, ViTD2LForImageClassification, ViTD2LImageProcessor
from hf_vit_d2l.evaluation import ModelLoadError, load_model_and_processor
from hf_vit_d2l.predict import collect_images, main, predict_files

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {
    "image_size": 28,
    "patch_size": 7,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 1,
}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("predict") / "model"
    torch.manual_seed(0)
    ViTD2LForImageClassification(ViTD2LConfig(**TINY)).save_pretrained(folder)
    ViTD2LImageProcessor(size={"height": 28, "width": 28}).save_pretrained(folder)
    return str(folder)


def _reference_probs(folder, image: Image.Image) -> torch.Tensor:
    model = ViTD2LForImageClassification.from_pretrained(folder).eval()
    processor = ViTD2LImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        return model(**processor(images=image, return_tensors="pt")).logits.softmax(-1)[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """PNG/JPEG files of modes L, RGB, RGBA, P and LA at odd sizes, in a folder with a subfolder and a non-image."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    (root / "sub").mkdir()
    made = {}
    specs = [
        ("gray.png", "L", (28, 28)),
        ("rgb.jpg", "RGB", (37, 53)),
        ("rgba.png", "RGBA", (101, 7)),
        ("palette.png", "P", (64, 30)),
        ("gray_alpha.png", "LA", (13, 17)),
        ("sub/big.jpeg", "RGB", (640, 480)),
    ]
    for name, mode, (w, h) in specs:
        channels = {"L": 1, "RGB": 3, "RGBA": 4, "LA": 2, "P": 3}[mode]
        array = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        image = Image.fromarray(array.squeeze(-1) if channels == 1 else array, {"P": "RGB"}.get(mode, mode))
        if mode == "P":
            image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        image.save(root / name)
        made[name] = str(root / name)
    (root / "notes.txt").write_text("not an image")
    return root, made


def test_every_mode_and_size_gets_a_prediction_equal_to_the_model(model_folder, images):
    root, made = images
    model, processor = load_model_and_processor(model_folder)
    files = sorted(made.values())
    results = list(predict_files(files, model, processor, top_k=3, batch_size=4, progress=False))
    assert [r.path for r in results] == files
    for result in results:
        assert result.error is None
        assert len(result.labels) == 3
        assert set(result.labels) <= set(FASHION_MNIST_LABELS)
        assert result.scores == sorted(result.scores, reverse=True)
        with Image.open(result.path) as image:
            reference = _reference_probs(model_folder, image.copy())
        top = reference.topk(3)
        assert result.scores == pytest.approx(top.values.tolist(), abs=1e-5)
        assert result.labels == [FASHION_MNIST_LABELS[int(i)] for i in top.indices]


def test_batching_does_not_change_results(model_folder, images):
    _, made = images
    model, processor = load_model_and_processor(model_folder)
    files = sorted(made.values())
    one = list(predict_files(files, model, processor, top_k=10, batch_size=1, progress=False))
    many = list(predict_files(files, model, processor, top_k=10, batch_size=64, progress=False))
    for a, b in zip(one, many, strict=True):
        assert a.labels == b.labels
        assert a.scores == pytest.approx(b.scores, abs=1e-6)


def test_collect_walks_folders_recursively_and_skips_non_images(images, tmp_path):
    root, made = images
    files, errors = collect_images([str(root), str(tmp_path / "missing.png")])
    assert files == sorted(made.values(), key=lambda p: (os.path.dirname(p) != str(root), p))
    assert [e.path for e in errors] == [str(tmp_path / "missing.png")]
    assert "no such file" in errors[0].error
    (tmp_path / "empty").mkdir()
    _, errors = collect_images([str(tmp_path / "empty")])
    assert "no image files" in errors[0].error


def test_cli_json_with_corrupt_file_and_folder(model_folder, images, tmp_path, capsys):
    root, made = images
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    truncated = tmp_path / "truncated.jpg"
    with open(made["sub/big.jpeg"], "rb") as f:
        truncated.write_bytes(f.read()[:500])
    code = main(
        [str(corrupt), str(root), str(truncated), "--model", model_folder, "--top_k", "2", "--json", "--no_progress"]
    )
    assert code == 1
    out = json.loads(capsys.readouterr().out)
    by_file = {entry["file"]: entry for entry in out}
    assert set(by_file) == {str(corrupt), str(truncated), *made.values()}
    assert "truncated or damaged" in by_file[str(corrupt)]["error"]  # a PNG signature, then garbage
    assert "truncated" in by_file[str(truncated)]["error"]
    for path in made.values():
        predictions = by_file[path]["predictions"]
        assert len(predictions) == 2
        for prediction in predictions:
            assert prediction["label"] in FASHION_MNIST_LABELS, prediction
            assert 0 < prediction["score"] <= 1, prediction


def test_cli_text_output_and_top_k(model_folder, images, capsys):
    _, made = images
    assert main([made["gray.png"], "--model", model_folder, "--top_k", "4", "--no_progress"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(made["gray.png"] + ": ")
    assert line.count("(") == 4
    assert main([made["gray.png"], "--model", model_folder, "--top_k", "50", "--json", "--no_progress"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["predictions"]) == 10  # capped at num_labels


@pytest.mark.parametrize(
    "args, message",
    [
        (["--top_k", "0"], "--top_k must be >= 1"),
        (["--batch_size", "0"], "--batch_size must be >= 1"),
    ],
)
def test_cli_rejects_bad_numbers(model_folder, images, capsys, args, message):
    _, made = images
    assert main([made["gray.png"], "--model", model_folder, *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_bad_model_and_no_images(model_folder, images, tmp_path, capsys):
    _, made = images
    assert main([made["gray.png"], "--model", made["gray.png"]]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.png"), "--model", model_folder]) == 2
    assert "no image files to classify" in capsys.readouterr().err


def test_module_entry_point_with_remote_code(model_folder, images, tmp_path):
    """`python -m hf_vit_d2l.predict` as a user runs it, using the code files saved with the model."""
    _, made = images
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONPATH=REPO_ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "hf_vit_d2l.predict", made["rgb.jpg"], "--model", model_folder, "--json"]
        + ["--trust_remote_code", "--top_k", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [entry] = json.loads(proc.stdout)
    with Image.open(made["rgb.jpg"]) as image:
        reference = _reference_probs(model_folder, image.copy())
    assert entry["predictions"][0]["label"] == FASHION_MNIST_LABELS[int(reference.argmax())]
    assert entry["predictions"][0]["score"] == pytest.approx(float(reference.max()), abs=1e-5)


# ---------------------------------------------------------------------------------------------------- bad input


def _bomb_png(path, side=14_000):
    """A PNG whose header says side x side pixels (over PIL's bomb limit) with no pixel data: a few bytes on disk."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def test_one_bad_file_never_stops_the_run(model_folder, images, tmp_path, capsys, monkeypatch):
    _, made = images
    bomb = _bomb_png(tmp_path / "bomb.png")
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    locked = tmp_path / "locked.png"
    Image.new("L", (8, 8)).save(locked)
    real_open = Image.open

    def open_(fp, *args, **kwargs):  # root reads any file, so a chmod 000 file cannot fail here: simulate it
        if str(fp) == str(locked):
            raise PermissionError(13, "Permission denied", str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", open_)
    code = main([str(bomb), str(not_image), str(locked), made["gray.png"], "--model", model_folder, "--no_progress"])
    out, err = capsys.readouterr()
    assert code == 1
    assert out.startswith(made["gray.png"] + ": ")  # the good file is classified
    assert out.count("\n") == 1
    lines = {line.split(": ERROR ")[0]: line for line in err.splitlines() if ": ERROR " in line}
    limit = 2 * Image.MAX_IMAGE_PIXELS
    assert f"decompression-bomb limit of {limit:,} pixels" in lines[str(bomb)]
    assert "--max_image_pixels" in lines[str(bomb)]
    assert "not an image file" in lines[str(not_image)]
    assert "permission denied" in lines[str(locked)]
    assert "3 of 4 inputs failed." in err
    assert "Traceback" not in err

    # Raising the limit lets PIL past the guard; this file then fails for what it is: no pixel data.
    assert main([str(bomb), "--model", model_folder, "--max_image_pixels", str(14_000**2)]) == 1
    assert "truncated or damaged" in capsys.readouterr().err


def test_rgba_and_16_bit_images_get_one_note_and_the_processors_answer(model_folder, tmp_path, capsys):
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (40, 30), (255, 0, 0, 128)).save(rgba)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.linspace(0, 65535, 30 * 20, dtype=np.uint16).reshape(30, 20)).save(deep)
    with Image.open(deep) as image:
        assert image.mode.startswith("I")  # a real 16-bit PNG
    plain = tmp_path / "plain.png"
    Image.new("L", (28, 28), 200).save(plain)
    assert main([str(rgba), str(deep), str(plain), "--model", model_folder, "--json", "--top_k", "10"]) == 0
    out, err = capsys.readouterr()
    assert err.count("note: converting 2 image(s) to RGB") == 1
    from transformers import pipeline

    classifier = pipeline("image-classification", model=model_folder)
    entries = json.loads(out)
    assert len(entries) == 3, out
    for entry in entries:
        with Image.open(entry["file"]) as image:
            reference = _reference_probs(model_folder, image.copy())  # the processor, called with the PIL image
            by_pipeline = {p["label"]: p["score"] for p in classifier(image.copy(), top_k=10)}
        scores = {p["label"]: p["score"] for p in entry["predictions"]}
        assert [scores[n] for n in FASHION_MNIST_LABELS] == pytest.approx(reference.tolist(), abs=1e-6)
        assert [scores[n] for n in FASHION_MNIST_LABELS] == pytest.approx(
            [by_pipeline[n] for n in FASHION_MNIST_LABELS], abs=1e-6
        )


def _copy_model(model_folder, tmp_path, name):
    import shutil

    return shutil.copytree(model_folder, tmp_path / name)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncated", "model.safetensors is damaged"),
        ("empty", "model.safetensors is damaged"),
        ("garbage", "model.safetensors is damaged"),
        ("no_weights", "no file named model.safetensors"),
        ("no_config", "has no config.json"),
        ("bad_json", "is not valid JSON"),
        ("model_type", "model_type 'vit_d2l_typo', which is not 'vit_d2l'"),
        ("no_processor", "has no preprocessor_config.json"),
        ("missing_folder", "no such folder"),
    ],
)
def test_broken_model_folders_get_one_line(model_folder, images, tmp_path, capsys, damage, message):
    _, made = images
    folder = _copy_model(model_folder, tmp_path, "model")
    weights = folder / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "garbage":
        weights.write_bytes(b"\xff" * 64)
    elif damage == "no_weights":
        weights.unlink()
    elif damage == "no_config":
        (folder / "config.json").unlink()
    elif damage == "bad_json":
        (folder / "config.json").write_text("{not json")
    elif damage == "model_type":  # keeps its auto_map: transformers would ask whether to trust the code
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "model_type": "vit_d2l_typo"}))
    elif damage == "no_processor":
        (folder / "preprocessor_config.json").unlink()
    else:
        folder = tmp_path / "outputs" / "never_trained"
    assert main([made["gray.png"], "--model", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: ")
    assert message in err
    assert str(folder) in err
    with pytest.raises(ModelLoadError, match=message):
        load_model_and_processor(folder)


def test_local_looking_path_is_not_reported_as_a_hub_problem(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    with pytest.raises(ModelLoadError, match="outputs/run1: no such folder"):
        load_model_and_processor("outputs/run1")  # one slash, like a Hub id, but outputs/ is a local folder


def test_attention_maps_writes_one_figure_per_classified_image(model_folder, images, tmp_path, capsys):
    _, made = images
    maps = tmp_path / "maps"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    argv = [made["gray.png"], made["rgba.png"], str(broken), "--model", model_folder, "--no_progress"]
    assert main([*argv, "--attention_maps", str(maps)]) == 1  # the broken file fails alone
    figures = sorted(p.name for p in maps.iterdir())
    assert len(figures) == 2
    assert all(name.endswith(".png") for name in figures), figures
    assert {name.split("-", 1)[1] for name in figures} == {"gray.png", "rgba.png"}
    widths = {name: Image.open(maps / name).size[0] for name in figures}
    assert all(width > 300 for width in widths.values()), widths
