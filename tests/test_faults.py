"""Faults a new user meets (issue 26): weights that do not fit their config, bad pixels, files that are not files.

* Loading is strict wherever a command loads a model (`load_model_and_processor`): missing weights, other shapes,
  extra layers and a model_type that is not the saving class's each give one `error:` line naming the file, exit 2.
  Tensors the model does not use give a warning. The plain `from_pretrained` keeps transformers' behaviour.
* Pixels are checked: NaN, infinity and empty images raise one `ValueError` in the processor (so in `pipeline` and
  predict too); out-of-range values are clipped or rescaled with a warning naming the rule.
* predict never opens a FIFO, socket or device: each gets its own line, and the images beside it are classified.
* One `error:` line where a traceback or the wrong words were: broken files and missing class folders in image
  folders (before training), a model_type without image classifiers, a pickle that would run code, an output folder
  that cannot be written; `--trust_remote_code` runs the folder's own code; PIL's "La" mode is read as "LA".

The variants differ from the issue's examples (which were 3 blocks in the config, 19 of 20 tensors missing ...).
"""

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import pipeline

from hf_vit_d2l import ViTD2LConfig, ViTD2LForImageClassification, ViTD2LImageProcessor
from hf_vit_d2l.evaluation import ModelLoadError, load_model, load_model_and_processor
from hf_vit_d2l.predict import collect_images
from hf_vit_d2l.predict import main as predict_main

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "tiny_v0_1_0"
FIXTURE_EXPECTED = Path(__file__).parent / "fixtures" / "tiny_v0_1_0_expected.pt"
TINY = {
    "image_size": 28,
    "patch_size": 7,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
}
# Tensors of the tiny model: 4 embedding tensors, 12 per block, 2 for the final LayerNorm, 2 for the classifier.
TENSORS_ONE_BLOCK = 20
TENSORS_TWO_BLOCKS = 32
CLI_TIMEOUT = 300  # seconds; a process that blocks fails the test instead of hanging the suite


def save_tiny_model(folder: Path, num_hidden_layers: int) -> Path:
    torch.manual_seed(0)
    ViTD2LForImageClassification(ViTD2LConfig(**TINY, num_hidden_layers=num_hidden_layers)).save_pretrained(folder)
    ViTD2LImageProcessor(size={"height": 28, "width": 28}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def one_block(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("one_block") / "model", num_hidden_layers=1)


@pytest.fixture(scope="module")
def two_blocks(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("two_blocks") / "model", num_hidden_layers=2)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "shoe.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(path)
    return path


def variant(source: Path, dest: Path, config: dict | None = None, weights=None) -> Path:
    """A copy of the saved model `source` with config.json keys replaced by `config` and the weights by
    `weights(state_dict)`."""
    shutil.copytree(source, dest)
    if config:
        path = dest / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    if weights:
        path = dest / "model.safetensors"
        save_file(weights(load_file(path)), path, metadata={"format": "pt"})
    return dest


def five_labels() -> dict:
    names = ["top", "trouser", "pullover", "dress", "coat"]
    return {"id2label": dict(enumerate(names)), "label2id": {name: i for i, name in enumerate(names)}}


def without_classifier(state: dict) -> dict:
    return {key: value for key, value in state.items() if not key.startswith("classifier.")}


def renamed_final_norm(state: dict) -> dict:
    return {key.replace("vit_d2l.layernorm.", "vit_d2l.final_norm."): value for key, value in state.items()}


# name -> (source fixture, config.json changes, weights change, the file the line names, what the line says)
REFUSALS = {
    "config with 2 blocks, weights with 1": (
        "one_block",
        {"num_hidden_layers": 2},
        None,
        "model.safetensors",
        f"lacks 12 of the {TENSORS_TWO_BLOCKS} tensors",
    ),
    "config with 1 block, weights with 2": (
        "two_blocks",
        {"num_hidden_layers": 1},
        None,
        "model.safetensors",
        "tensor(s) of ViTD2LForImageClassification layers that config.json does not describe",
    ),
    "weights without the classifier": (
        "one_block",
        None,
        without_classifier,
        "model.safetensors",
        "has no classifier (classifier.bias, classifier.weight)",
    ),
    "weights with one tensor": (
        "one_block",
        None,
        lambda state: {"vit_d2l.embeddings.position_embeddings": state["vit_d2l.embeddings.position_embeddings"]},
        "model.safetensors",
        f"lacks {TENSORS_ONE_BLOCK - 1} of the {TENSORS_ONE_BLOCK} tensors",
    ),
    "a renamed key": ("one_block", None, renamed_final_norm, "model.safetensors", "(first: vit_d2l.layernorm.bias)"),
    "model_type vit": ("one_block", {"model_type": "vit"}, None, "config.json", "has model_type 'vit', but"),
    "model_type bert": ("one_block", {"model_type": "bert"}, None, "config.json", "has model_type 'bert', but"),
    "5 labels, a classifier of 10": (
        "one_block",
        five_labels(),
        None,
        "model.safetensors",
        "classifier.bias is (10) in the file, (5) in the ViTD2LForImageClassification",
    ),
    "hidden_size 64, weights of 32": (
        "one_block",
        {"hidden_size": 64},
        None,
        "model.safetensors",
        "vit_d2l.embeddings.cls_token is (1, 1, 32) in the file, (1, 1, 64)",
    ),
    "image_size 56, weights for 28": (
        "one_block",
        {"image_size": 56},
        None,
        "model.safetensors",
        "vit_d2l.embeddings.position_embeddings is (1, 17, 32) in the file, (1, 65, 32)",
    ),
    "5 heads for hidden_size 32": (
        "one_block",
        {"num_attention_heads": 5},
        None,
        "config.json",
        "is not a valid config: Class validation error",
    ),
}


@pytest.fixture(params=sorted(REFUSALS))
def refused(request, tmp_path) -> tuple[Path, str, str]:
    """(a model folder that must be refused, the file its error line names, a part of that line)."""
    source, config, weights, named_file, message = REFUSALS[request.param]
    folder = variant(request.getfixturevalue(source), tmp_path / "model", config, weights)
    return folder, str(folder / named_file), message


def test_predict_refuses_with_one_error_line_and_exit_2(refused, image_file, capsys):
    folder, named_file, message = refused
    code = predict_main([str(image_file), "--model", str(folder), "--no_progress"])
    out, err = capsys.readouterr()
    assert code == 2, f"exit code {code}, stderr: {err}"
    assert out == "", "no label may be printed for a refused model"
    assert len(err.splitlines()) == 1, f"expected one line, got: {err}"
    assert err.startswith(f"error: {named_file} "), f"the line must name {named_file}: {err}"
    assert message in err, f"the line must say {message!r}: {err}"
    assert "Traceback" not in err, err


def test_load_model_and_processor_raises_model_load_error(refused):
    folder, named_file, message = refused
    with pytest.raises(ModelLoadError) as raised:
        load_model_and_processor(folder)
    assert str(raised.value).startswith(named_file), str(raised.value)
    assert message in str(raised.value), str(raised.value)


def test_transformers_verbosity_and_progress_bars_are_restored(refused):
    folder, _, _ = refused
    verbosity = transformers.logging.get_verbosity()
    progress_bar = transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_info()
    try:
        with pytest.raises(ModelLoadError):
            load_model(folder)
        assert transformers.logging.get_verbosity() == transformers.logging.INFO, "verbosity not restored"
        assert transformers.logging.is_progress_bar_enabled() == progress_bar, "progress bar setting not restored"
    finally:
        transformers.logging.set_verbosity(verbosity)


def evaluation_command() -> list[str]:
    """The evaluation entry point, as an installed package runs it."""
    return [sys.executable, "-m", "hf_vit_d2l.evaluation"]


def run_cli(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT)


@pytest.mark.parametrize(
    ("source", "config", "message"),
    [
        ("two_blocks", {"num_hidden_layers": 3}, f"lacks 12 of the {12 * 3 + 8} tensors"),
        ("one_block", {"model_type": "vit"}, "has model_type 'vit', but"),
    ],
)
def test_evaluation_cli_refuses_with_one_error_line(request, tmp_path, source, config, message):
    folder = variant(request.getfixturevalue(source), tmp_path / "model", config)
    command = [*evaluation_command(), "--model_name_or_path", str(folder), "--max_eval_samples", "8"]
    proc = run_cli(command, tmp_path)
    assert proc.returncode == 2, f"exit code {proc.returncode}, stderr: {proc.stderr[-3000:]}"
    assert proc.stdout == "", "no accuracy may be printed for a refused model"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_unused_extra_tensors_get_a_warning_not_a_refusal(one_block, image_file, tmp_path):
    folder = variant(one_block, tmp_path / "model", weights=lambda state: {**state, "ema.cls_token": torch.zeros(3)})
    proc = run_cli([sys.executable, "-m", "hf_vit_d2l.predict", str(image_file), "--model", str(folder)], tmp_path)
    assert proc.returncode == 0, f"exit code {proc.returncode}, stderr: {proc.stderr[-3000:]}"
    assert proc.stdout.startswith(f"{image_file}: "), f"the image must be classified: {proc.stdout}"
    warning = f"{folder / 'model.safetensors'} holds 1 tensor(s) that ViTD2LForImageClassification does not use"
    assert proc.stderr.splitlines() == [f"{warning} (first: ema.cls_token); they are ignored."], proc.stderr


def test_ignore_mismatched_sizes_lets_only_the_classifier_differ(one_block, tmp_path, caplog):
    labels5 = variant(one_block, tmp_path / "labels5", five_labels())
    model, _ = load_model_and_processor(labels5, ignore_mismatched_sizes=True)
    assert model.classifier.weight.shape == (5, 32), "the classifier must be built for config.json's 5 labels"
    saved = load_file(one_block / "model.safetensors")
    for key, value in model.state_dict().items():
        if not key.startswith("classifier."):
            torch.testing.assert_close(value, saved[key], rtol=0, atol=0, msg=f"{key} was not loaded")
    assert "the classifier (classifier.bias, classifier.weight) does not fit config.json" in caplog.text
    # A training run's use: the saved model with a new config, and a new classifier for a 5-class dataset.
    config = ViTD2LConfig.from_pretrained(one_block, **five_labels())
    assert load_model(one_block, ignore_mismatched_sizes=True, config=config).classifier.out_features == 5
    with pytest.raises(ModelLoadError, match="has no classifier"):
        load_model(variant(one_block, tmp_path / "headless", weights=without_classifier))
    headless = load_model(tmp_path / "headless", ignore_mismatched_sizes=True)
    assert headless.classifier.out_features == 10, "a missing classifier is allowed, newly initialised"
    with pytest.raises(ModelLoadError, match=r"is \(1, 1, 32\) in the file, \(1, 1, 64\)"):
        load_model(variant(one_block, tmp_path / "wide", {"hidden_size": 64}), ignore_mismatched_sizes=True)


def test_plain_from_pretrained_keeps_transformers_behaviour(one_block, tmp_path):
    headless = variant(one_block, tmp_path / "headless", weights=without_classifier)
    model, info = ViTD2LForImageClassification.from_pretrained(headless, output_loading_info=True)
    assert info["missing_keys"] == {"classifier.weight", "classifier.bias"}, info
    assert model.classifier.out_features == 10
    labels5 = variant(one_block, tmp_path / "labels5", five_labels())
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        ViTD2LForImageClassification.from_pretrained(labels5)


def test_strict_loading_keeps_the_v0_1_0_logits():
    expected = torch.load(FIXTURE_EXPECTED, weights_only=True)
    model, _ = load_model_and_processor(FIXTURE)
    with torch.no_grad():
        logits = model(expected["pixel_values"]).logits
    torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=1e-6)


# -------------------------------------------------------------------------------------------------------- pixels


def gray_ramp() -> np.ndarray:
    """A 28 x 28 float image in [0, 1] whose every pixel differs from the 0-255 reading of itself."""
    return np.linspace(0.05, 1.0, 28 * 28, dtype=np.float32).reshape(28, 28)


def with_value(array: np.ndarray, value: float) -> np.ndarray:
    changed = array.copy()
    changed[3, 5] = value
    return changed


@pytest.fixture(scope="module")
def processor() -> ViTD2LImageProcessor:
    return ViTD2LImageProcessor(size={"height": 28, "width": 28})


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (with_value(gray_ramp(), np.nan), r"Cannot read the image: 1 of its 784 values are NaN or infinite"),
        (torch.from_numpy(with_value(gray_ramp(), -np.inf)), "NaN or infinite"),
        (np.full((3, 28, 28), np.inf, np.float32), "2352 of its 2352 values are NaN or infinite"),
        ([gray_ramp(), with_value(gray_ramp(), np.inf)], "Cannot read image 1: 1 of its 784"),
        (np.stack([gray_ramp(), with_value(gray_ramp(), np.nan)])[..., None], "NaN or infinite"),
        (Image.fromarray(with_value(gray_ramp(), np.nan), mode="F"), "NaN or infinite"),
        (np.zeros((0, 0), np.uint8), r"array of shape \(0, 0\) is empty"),
        (np.zeros((28, 0, 3), np.float32), r"array of shape \(28, 0, 3\) is empty"),
        (torch.zeros(0, 1, 28, 28), r"array of shape \(0, 1, 28, 28\) is empty"),
        (Image.new("L", (0, 5)), r"the PIL image is empty \(0x5 pixels\)"),
    ],
)
def test_non_finite_and_empty_images_raise_one_value_error(processor, bad, message):
    with pytest.raises(ValueError, match=message):
        processor(bad, return_tensors="pt")


@pytest.mark.parametrize("bad", [with_value(gray_ramp(), np.nan), np.zeros((0, 0), np.float32)])
def test_pipeline_refuses_nan_and_empty_images(one_block, bad):
    classify = pipeline("image-classification", model=str(one_block), device="cpu")
    with pytest.raises(ValueError, match="NaN or infinite|is empty"):
        classify(bad)


def test_collator_path_process_image_refuses_nan_too(processor):
    with pytest.raises(ValueError, match="NaN or infinite"):
        processor.process_image(with_value(gray_ramp(), np.nan))


@pytest.mark.parametrize("overshoot", [1.02, 1.4])
def test_float_overshoot_up_to_1_5_is_clipped_with_a_warning(processor, overshoot):
    image = with_value(gray_ramp(), overshoot)
    with pytest.warns(UserWarning, match=r"slightly above 1 .* clipped to \[0, 1\], not read on the 0-255 scale"):
        out = processor(image, return_tensors="pt").pixel_values
    clipped = processor(np.clip(image, 0, 1), return_tensors="pt").pixel_values
    torch.testing.assert_close(out, clipped, rtol=0, atol=0)
    assert out.mean().item() > 0.4, "the image must not be read on the 0-255 scale (almost black)"


@pytest.mark.parametrize(
    ("image", "rule", "same_as"),
    [
        (gray_ramp() * 200, "float values above 1.5: read on the 0-255 scale", gray_ramp() * 200 / 255),
        (with_value(gray_ramp() * 255, 300.0), "clipped to 255", with_value(gray_ramp(), 1.0)),
        (with_value(gray_ramp(), -0.3), "negative values: clipped to 0", with_value(gray_ramp(), 0.0)),
        (
            (gray_ramp() * 65535).astype(np.int32),
            "integer values above 255: read as 16-bit",
            (gray_ramp() * 65535).astype(np.int32) / 65535,
        ),
        (np.full((28, 28), -40, np.int16), "negative values: clipped to 0", np.zeros((28, 28), np.uint8)),
    ],
)
def test_other_out_of_range_values_warn_naming_the_rule(processor, image, rule, same_as):
    with pytest.warns(UserWarning, match=rule):
        out = processor(image, return_tensors="pt").pixel_values
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the in-range reference must need no rule
        expected = processor(same_as, return_tensors="pt").pixel_values
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "image",
    [
        (gray_ramp() * 255).astype(np.uint8),
        gray_ramp(),
        torch.from_numpy(gray_ramp()).bfloat16(),
        (gray_ramp() * 255).astype(np.int64),
        Image.fromarray((gray_ramp() * 255).astype(np.uint8)),
    ],
)
def test_in_range_images_give_no_warning_and_the_unit_scale(processor, image):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = processor(image, return_tensors="pt").pixel_values
    np.testing.assert_allclose(out[0, 0].numpy(), gray_ramp(), atol=1 / 255, rtol=0)


# ----------------------------------------------------------------------------------------- files that block


@pytest.fixture
def folder_with_special_files(tmp_path, image_file) -> tuple[Path, Path, list[Path]]:
    """(a folder, the good image in it, the FIFO, socket, device link and broken link beside it, all named .png)."""
    folder = tmp_path / "images"
    folder.mkdir()
    good = folder / "good.png"
    shutil.copyfile(image_file, good)
    os.mkfifo(folder / "pipe.png")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "socket.png"))
    (folder / "null.png").symlink_to("/dev/null")
    (folder / "broken.png").symlink_to(folder / "missing.png")
    yield folder, good, [folder / name for name in ("broken.png", "null.png", "pipe.png", "socket.png")]
    server.close()


def test_collect_images_skips_what_is_not_a_regular_file(folder_with_special_files):
    folder, good, special = folder_with_special_files
    assert stat.S_ISFIFO(os.stat(folder / "pipe.png").st_mode), "the fixture must hold a real FIFO"
    files, errors = collect_images([str(folder), str(folder / "pipe.png"), "/dev/null"])
    assert files == [str(good)], files
    reasons = {error.path: error.error for error in errors}
    assert reasons[str(folder / "broken.png")] == "broken symbolic link", reasons
    assert reasons[str(folder / "null.png")] == "not a regular file (a device); skipped", reasons
    assert reasons[str(folder / "pipe.png")] == "not a regular file (a FIFO); skipped", reasons
    assert reasons[str(folder / "socket.png")] == "not a regular file (a socket); skipped", reasons
    assert reasons["/dev/null"] == "not a regular file (a device); skipped", reasons
    assert len(errors) == 6, "the FIFO given explicitly gets its own entry too"


def test_predict_never_blocks_on_a_fifo_and_classifies_the_image_beside_it(
    folder_with_special_files, one_block, tmp_path
):
    folder, good, special = folder_with_special_files
    outside = tmp_path / "outside.png"
    os.mkfifo(outside)
    command = [sys.executable, "-m", "hf_vit_d2l.predict", str(folder), str(outside), "--model", str(one_block)]
    proc = run_cli([*command, "--json"], tmp_path)  # a process that opens a FIFO blocks: TimeoutExpired
    assert proc.returncode == 1, f"exit code {proc.returncode} (1: some inputs failed), stderr: {proc.stderr[-3000:]}"
    by_file = {entry["file"]: entry for entry in json.loads(proc.stdout)}
    assert len(by_file[str(good)]["predictions"]) == 3, by_file
    assert by_file[str(outside)]["error"] == "not a regular file (a FIFO); skipped", by_file
    for path in special:
        assert "error" in by_file[str(path)], f"{path} must get its own entry: {by_file}"


def test_an_explicit_fifo_is_not_a_regular_file_not_a_missing_one(one_block, tmp_path, capsys):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert predict_main([str(fifo), "--model", str(one_block)]) == 2
    err = capsys.readouterr().err
    assert f"error: {fifo}: not a regular file (a FIFO); skipped" in err.splitlines(), err
    assert "no such file" not in err, err


# ------------------------------------------------------------------------- one line where a traceback was (class 5)


def write_png(path: Path, value: int = 0, size: tuple[int, int] = (28, 28)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, np.uint8)).save(path)
    return path


def image_folder(root: Path, classes=("boot", "shirt"), per_class: int = 4) -> Path:
    """`root/<class>/<n>.png`, a valid image folder with distinct images."""
    for number, name in enumerate(classes):
        for index in range(per_class):
            write_png(root / name / f"{index}.png", value=30 * number + index)
    return root


def truncated_png(path: Path) -> Path:
    """A noisy PNG cut in the middle of its image data (its header is whole)."""
    noise = np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def bomb_png(path: Path, side: int = 30_000) -> Path:
    """A PNG header declaring side x side pixels (over PIL's limit) and no pixel data: a few bytes on disk."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def corrupt_crc_png(path: Path) -> Path:
    data = bytearray(write_png(path).read_bytes())
    data[-20] ^= 0xFF  # inside the image data chunk, whose CRC no longer matches
    path.write_bytes(bytes(data))
    return path


# name -> (how to plant the bad file in a class folder, what the line says about it)
BROKEN_FILES = {
    "text named .jpg": (lambda path: path.with_suffix(".jpg").write_text("not a JPEG\n"), "is not an image file"),
    "empty .png": (lambda path: path.write_bytes(b""), "is empty (0 bytes)"),
    "truncated .png": (truncated_png, "is damaged"),
    "PNG with a bad CRC": (corrupt_crc_png, "is damaged"),
    "decompression bomb": (bomb_png, "is over PIL's decompression-bomb limit"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_FILES))
def test_a_broken_image_in_an_image_folder_is_named_before_training(tmp_path, case):
    from hf_vit_d2l.data import DataArguments, load_image_classification_dataset

    plant, says = BROKEN_FILES[case]
    train = image_folder(tmp_path / "train", per_class=5)
    bad = tmp_path / "train" / "shirt" / "z_bad.png"
    plant(bad)
    named = bad.with_suffix(".jpg") if case == "text named .jpg" else bad
    with pytest.raises(ValueError) as raised:
        load_image_classification_dataset(DataArguments(train_dir=str(train)))
    line = str(raised.value)
    assert line.startswith(f"{named} {says}"), f"the line must start with the file and why: {line}"
    assert f"1 of the 11 image files in --train_dir {train} cannot be read" in line, line
    assert "\n" not in line, line


def test_broken_images_in_the_validation_folder_and_a_dataset_folder_are_named(tmp_path):
    from hf_vit_d2l.data import DataArguments, load_image_classification_dataset

    train = image_folder(tmp_path / "train")
    validation = image_folder(tmp_path / "validation", per_class=2)
    (validation / "boot" / "a.png").write_bytes(b"")
    (validation / "shirt" / "b.png").write_text("<svg/>")
    args = DataArguments(train_dir=str(train), validation_dir=str(validation))
    with pytest.raises(ValueError, match=rf"^{validation / 'boot' / 'a.png'} is empty \(0 bytes\): 2 of the 6 image "):
        load_image_classification_dataset(args)
    # --dataset_name with a local folder of class folders is an image folder too.
    (train / "shirt" / "c.webp").write_bytes(b"RIFF0000WEBPVP8 broken")
    with pytest.raises(ValueError, match=rf"in --dataset_name {train} cannot be read"):
        load_image_classification_dataset(DataArguments(dataset_name=str(train)))


@pytest.mark.parametrize(
    ("layout", "found"),
    [
        ({"sneaker": 5}, "all in one class folder, 'sneaker'"),
        ({".": 4}, "all directly in the folder"),
        ({"bag": 3, "coat": 3, ".": 1}, "at different depths (in '.', 'bag', 'coat')"),
        ({"shoes/boot": 2, "shirt": 2}, "at different depths (in 'shirt', 'shoes/boot')"),
    ],
)
def test_an_image_folder_without_two_class_folders_says_so(tmp_path, layout, found):
    from hf_vit_d2l.data import DataArguments, load_image_classification_dataset

    train = tmp_path / "train"
    for folder, count in layout.items():
        for index in range(count):
            write_png(train / folder / f"{index}.png", value=index)
    total = sum(layout.values())
    with pytest.raises(ValueError) as raised:
        load_image_classification_dataset(DataArguments(train_dir=str(train)))
    expected = (
        f"--train_dir {train} needs at least two class folders at one depth, each holding its images "
        f"(<folder>/<class>/<image>); its {total} images are {found}."
    )
    assert str(raised.value) == expected
    assert "no column 'label'" not in str(raised.value)


def test_an_empty_train_dir_says_it_holds_no_files(tmp_path):
    from hf_vit_d2l.data import DataArguments, DataUnavailableError, load_image_classification_dataset

    (tmp_path / "train" / "boot").mkdir(parents=True)
    with pytest.raises(DataUnavailableError, match=r"--train_dir .*train holds no files: it needs a folder of images"):
        load_image_classification_dataset(DataArguments(train_dir=str(tmp_path / "train")))


@pytest.mark.parametrize("case", ["broken file", "one class"])
def test_train_stops_with_one_error_line_before_building_the_model(tmp_path, case):
    train = image_folder(tmp_path / "train", classes=("boot",) if case == "one class" else ("boot", "bag"))
    if case == "broken file":
        (train / "bag" / "notes.png").write_text("shopping list")
    output = tmp_path / "run"
    command = [sys.executable, "-m", "hf_vit_d2l.training", "--train_dir", str(train), "--output_dir", str(output)]
    proc = run_cli([*command, "--use_cpu", "true", "--num_train_epochs", "1"], tmp_path)
    assert proc.returncode == 2, f"exit code {proc.returncode}, stderr: {proc.stderr[-3000:]}"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    expected = f"{train / 'bag' / 'notes.png'} is not an image" if case == "broken file" else "two class folders"
    assert len(errors) == 1 and expected in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "Model:" not in proc.stderr, "the model must not be built before the data is checked"
    assert not (output / "config.json").exists(), "nothing may be trained or saved"


def test_evaluation_names_a_broken_validation_image_in_one_line(one_block, tmp_path, capsys):
    from hf_vit_d2l.evaluation import main as evaluation_main

    validation = image_folder(tmp_path / "validation", classes=("Bag", "Coat"), per_class=2)
    (validation / "Coat" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    command = ["--model_name_or_path", str(one_block), "--output_dir", str(tmp_path / "eval")]
    code = evaluation_main([*command, "--train_dir", str(validation), "--validation_dir", str(validation)])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == "", "no accuracy may be printed"
    errors = [line for line in err.splitlines() if "error" in line.lower()]  # datasets' progress bars aside
    assert len(errors) == 1, f"expected one error line, got: {err}"
    assert errors[0].startswith(f"error: {validation / 'Coat' / 'x.png'} "), f"the line must name the file: {err}"
    assert f"1 of the 5 image files in --train_dir {validation} cannot be read" in errors[0], err
    assert "Traceback" not in err, err


@pytest.mark.parametrize(
    ("changes", "model_type"),
    [
        ({"model_type": "bert", "architectures": None}, "bert"),  # config.json's auto_map made transformers ask
        ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "gpt2"),
        ({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "auto_map": None}, "t5"),
    ],
)
def test_a_model_type_without_image_classifiers_is_named_with_what_is_expected(
    one_block, image_file, tmp_path, capsys, changes, model_type
):
    folder = tmp_path / "model"
    shutil.copytree(one_block, folder)
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    assert predict_main([str(image_file), "--model", str(folder), "--no_progress"]) == 2
    out, err = capsys.readouterr()
    assert out == "", "no label may be printed"
    expected = (
        f"error: {folder / 'config.json'} has model_type {model_type!r}, which has no image-classification model; "
        "expected 'vit_d2l' (this package's models)"
    )
    assert len(err.splitlines()) == 1 and err.startswith(expected), err
    assert "custom code" not in err and "Unrecognized configuration class" not in err, err


def modeling_that_answers_dress(folder: Path) -> Path:
    """The folder's own modeling file, changed so that its classifier answers class 3 ("Dress") for every image."""
    with open(folder / "modeling_vit_d2l.py", "a") as f:
        f.write(
            "\n\n_forward = ViTD2LForImageClassification.forward\n\n\n"
            "def _always_dress(self, *args, **kwargs):\n"
            "    output = _forward(self, *args, **kwargs)\n"
            "    output.logits = torch.zeros_like(output.logits)\n"
            "    output.logits[:, 3] = 20.0\n"
            "    return output\n\n\n"
            "ViTD2LForImageClassification.forward = _always_dress\n"
        )
    return folder


def test_trust_remote_code_runs_the_folders_own_code(one_block, image_file, tmp_path):
    folder = modeling_that_answers_dress(variant(one_block, tmp_path / "model"))
    script = (
        "import json, sys\n"
        "from hf_vit_d2l.evaluation import load_model_and_processor\n"
        "for trust in (False, True):\n"
        "    model, processor = load_model_and_processor(sys.argv[1], trust_remote_code=trust)\n"
        "    print(json.dumps([type(model).__module__, type(processor).__module__]))\n"
    )
    proc = run_cli([sys.executable, "-c", script, str(folder)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    installed, stored = (json.loads(line) for line in proc.stdout.splitlines())
    assert installed == ["hf_vit_d2l.modeling_vit_d2l", "hf_vit_d2l.image_processing_vit_d2l"], installed
    assert all(module.startswith("transformers_modules.") for module in stored), (
        f"the folder's code must run: {stored}"
    )
    command = [sys.executable, "-m", "hf_vit_d2l.predict", str(image_file), "--model", str(folder), "--top_k", "1"]
    trusted = run_cli([*command, "--trust_remote_code"], tmp_path)
    assert trusted.returncode == 0, trusted.stderr[-3000:]
    assert trusted.stdout == f"{image_file}: Dress (1.000)\n", f"the folder's modeling file must run: {trusted.stdout}"


class RunsCode:
    """A pickled object whose unpickling would run `code` (here: create a marker file)."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (eval, (self.code,))


@pytest.mark.parametrize("layout", ["zip (torch.save)", "legacy torch.save", "plain pickle"])
def test_a_pickle_that_would_run_code_is_refused_in_one_line(one_block, image_file, tmp_path, capsys, layout):
    import pickle

    folder = tmp_path / "model"
    shutil.copytree(one_block, folder)
    marker = tmp_path / "ran"
    state = {**load_file(folder / "model.safetensors"), "evil": RunsCode(f"open({str(marker)!r}, 'w')")}
    (folder / "model.safetensors").unlink()
    weights = folder / "pytorch_model.bin"
    if layout == "plain pickle":
        weights.write_bytes(pickle.dumps(state))
    else:
        torch.save(state, weights, _use_new_zipfile_serialization=layout.startswith("zip"))
    assert predict_main([str(image_file), "--model", str(folder), "--no_progress"]) == 2
    out, err = capsys.readouterr()
    assert not marker.exists(), "the pickle's code ran"
    assert out == "", "no label may be printed"
    assert len(err.splitlines()) == 1, f"expected one line, got: {err}"
    assert err.startswith(f"error: {weights} is refused as unsafe"), err
    assert "safetensors" in err, "the line must say to use safetensors"
    assert "weights_only" not in err, f"the line must not advise weights_only=False: {err}"


def gray_alpha(mode: str) -> Image.Image:
    """A 28 x 28 gray ramp with a varying alpha (premultiplied for "La"), in `mode`."""
    ramp = (gray_ramp() * 255).astype(np.uint8)
    alpha = np.tile(np.linspace(40, 255, 28).astype(np.uint8), (28, 1))
    return Image.fromarray(np.dstack([ramp, alpha]), mode="LA").convert(mode)


def test_mode_la_is_read_as_la_not_refused_by_pil(processor):
    from hf_vit_d2l.image_processing_vit_d2l import conversion_loses_information

    premultiplied = gray_alpha("La")
    assert premultiplied.mode == "La"
    out = processor(premultiplied, return_tensors="pt").pixel_values
    expected = processor(premultiplied.convert("LA"), return_tensors="pt").pixel_values
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert conversion_loses_information(premultiplied).startswith("transparency"), "the alpha is dropped"
    rgb = ViTD2LImageProcessor(size={"height": 28, "width": 28}, num_channels=3)
    assert rgb(premultiplied, return_tensors="pt").pixel_values.shape == (1, 3, 28, 28)


@pytest.mark.parametrize(
    "mode", ["PA", "I;16", "I;16L", "I;16B", "CMYK", "YCbCr", "HSV", "LAB", "RGBa", "RGBX", "1", "I", "F"]
)
def test_rare_pil_modes_follow_the_pipeline_rule(processor, mode):
    rgb = Image.fromarray((np.stack([gray_ramp(), gray_ramp().T, 1 - gray_ramp()], -1) * 255).astype(np.uint8))
    image = gray_alpha(mode) if mode == "PA" else rgb.convert(mode)
    assert image.mode == mode
    out = processor(image, return_tensors="pt").pixel_values
    expected = processor(image.convert("RGB"), return_tensors="pt").pixel_values  # what `pipeline` feeds it
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "where",
    [
        "/sys/hf_vit_d2l_out",  # a read-only file system, for root too
        "{file}/maps",  # below a regular file
        "{file}",  # a regular file
    ],
)
def test_an_output_folder_that_cannot_be_written_is_one_line_before_any_work(
    one_block, image_file, tmp_path, capsys, where
):
    from hf_vit_d2l.evaluation import main as evaluation_main

    folder = where.format(file=image_file)
    if where.startswith("/sys") and not os.path.isdir("/sys"):
        pytest.skip("needs a /sys file system")
    assert predict_main([str(image_file), "--model", str(one_block), "--attention_maps", folder]) == 2
    out, err = capsys.readouterr()
    assert out == "", "the error must come before any prediction"
    (line,) = err.splitlines()
    assert line.startswith(f"error: --attention_maps {folder}: "), line
    reason = "it is a file, not a folder" if where == "{file}" else "cannot write there"
    assert reason in line, line
    # The evaluation checks its --output_dir before it loads the model or the data (none is given here).
    assert evaluation_main(["--model_name_or_path", str(one_block), "--output_dir", folder]) == 2
    out, err = capsys.readouterr()
    assert out == "", "no accuracy may be printed"
    (line,) = err.splitlines()
    assert line.startswith(f"error: --output_dir {folder}: ") and reason in line, line


def test_hub_models_a_foreign_model_type_and_the_repos_own_code(local_hub, one_block, image_file, tmp_path):
    from hub_server import MirrorUploadApi

    bert_typed = tmp_path / "bert_typed"
    shutil.copytree(one_block, bert_typed)
    config = json.loads((bert_typed / "config.json").read_text())
    del config["architectures"]  # only the auto_map is left: transformers asked for remote code
    (bert_typed / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    own_code = modeling_that_answers_dress(variant(one_block, tmp_path / "own_code"))
    uploads = MirrorUploadApi(local_hub)
    for repo, folder in (("someone/bert-typed", bert_typed), ("someone/own-code", own_code)):
        uploads.create_repo(repo)
        uploads.upload_folder(repo_id=repo, folder_path=folder, commit_message=f"{folder.name} model")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=local_hub.url, HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH=str(REPO_ROOT))
    predict = [sys.executable, "-m", "hf_vit_d2l.predict", str(image_file), "--top_k", "1", "--model"]

    refused = subprocess.run(
        [*predict, "someone/bert-typed"], env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT
    )
    assert refused.returncode == 2, refused.stderr[-3000:]
    expected = "error: someone/bert-typed's config.json has model_type 'bert', which has no image-classification model"
    assert refused.stderr.startswith(expected), refused.stderr[-3000:]
    assert len(refused.stderr.splitlines()) == 1, refused.stderr[-3000:]

    command = [*predict, "someone/own-code", "--trust_remote_code"]
    trusted = subprocess.run(command, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT)
    assert trusted.returncode == 0, trusted.stderr[-3000:]
    assert trusted.stdout == f"{image_file}: Dress (1.000)\n", f"the repo's modeling file must run: {trusted.stdout}"
