"""Tests of `hf_vit_d2l.data` on real Fashion-MNIST: loading (local IDX, parquet, image folders), validation,
errors, the collator (both backends) and augmentation."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import torch
from conftest import TINY_TEST, TINY_TRAIN, write_idx
from datasets import ClassLabel, Dataset, Image, load_dataset
from PIL import Image as PILImage

from hf_vit_d2l import FASHION_MNIST_LABELS, ViTD2LImageProcessor
from hf_vit_d2l import data as D

# Known facts of the real files, measured once (`python -m hf_vit_d2l.data check`, numpy on the arrays).
FIRST_TRAIN_LABEL, FIRST_TRAIN_PIXEL_SUM = 9, 76247  # an "Ankle boot"
FIRST_TEST_LABEL, FIRST_TEST_PIXEL_SUM = 9, 33456


# ------------------------------------------------------------------------------------------------------------
# Real files
# ------------------------------------------------------------------------------------------------------------


def test_real_files_checksums_and_shapes(fashion_mnist_dir, fashion_mnist_arrays):
    files = D.find_fashion_mnist_files(fashion_mnist_dir)
    assert D.verify_fashion_mnist_checksums(files) == {p.name: True for pair in files.values() for p in pair}
    (train_x, train_y), (test_x, test_y) = fashion_mnist_arrays["train"], fashion_mnist_arrays["test"]
    assert train_x.shape == (60_000, 28, 28) and train_x.dtype == np.uint8
    assert test_x.shape == (10_000, 28, 28) and test_y.shape == (10_000,)
    assert np.bincount(train_y).tolist() == [6000] * 10 and np.bincount(test_y).tolist() == [1000] * 10
    assert (int(train_y[0]), int(train_x[0].sum())) == (FIRST_TRAIN_LABEL, FIRST_TRAIN_PIXEL_SUM)
    assert (int(test_y[0]), int(test_x[0].sum())) == (FIRST_TEST_LABEL, FIRST_TEST_PIXEL_SUM)


@pytest.fixture(scope="module")
def local_fashion_mnist(fashion_mnist_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("datasets_cache")
    start = time.perf_counter()
    dataset = D.load_fashion_mnist(source="local", cache_dir=cache)
    first = time.perf_counter() - start
    start = time.perf_counter()
    again = D.load_fashion_mnist(source="local", cache_dir=cache)
    second = time.perf_counter() - start
    return dataset, again, first, second, cache


def test_local_load_has_the_hub_schema(local_fashion_mnist, fashion_mnist_arrays):
    dataset, again, first, second, cache = local_fashion_mnist
    assert dict(dataset.num_rows) == {"train": 60_000, "test": 10_000}
    for split in ("train", "test"):
        assert dataset[split].features == D.fashion_mnist_features()
        assert dataset[split].features["label"].names == FASHION_MNIST_LABELS
        assert isinstance(dataset[split].features["image"], Image)
    example = dataset["train"][0]
    assert example["image"].mode == "L" and example["image"].size == (28, 28)
    assert example["label"] == FIRST_TRAIN_LABEL
    assert int(np.asarray(example["image"]).sum()) == FIRST_TRAIN_PIXEL_SUM
    # Pixels and labels equal the IDX arrays across the split (spot checks over the whole range).
    for split in ("train", "test"):
        images, labels = fashion_mnist_arrays[split]
        indices = np.linspace(0, len(labels) - 1, 25).astype(int).tolist()
        rows = dataset[split].select(indices)
        assert rows["label"] == labels[indices].tolist()
        assert all((np.asarray(im) == images[i]).all() for im, i in zip(rows["image"], indices))
    assert getattr(dataset, "_hf_vit_d2l_source", "").startswith("local:")
    # The second load reuses the md5-keyed cache.
    assert second < 3.0 and second < first
    assert len(list((cache / "hf_vit_d2l_fashion_mnist").iterdir())) == 1
    assert again["test"][0]["label"] == FIRST_TEST_LABEL


def test_auto_uses_local_copy_with_one_log_line(local_fashion_mnist, monkeypatch, caplog):
    *_, cache = local_fashion_mnist
    monkeypatch.setattr(D, "hub_is_reachable", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with caplog.at_level("INFO", logger="hf_vit_d2l.data"):
        dataset = D.load_fashion_mnist(source="auto", cache_dir=cache)
    assert dict(dataset.num_rows) == {"train": 60_000, "test": 10_000}
    lines = [r.getMessage() for r in caplog.records if r.name == "hf_vit_d2l.data"]
    assert len(lines) == 1 and "not reachable" in lines[0] and D.DEFAULT_DATA_DIR in lines[0]


def test_train_pixel_statistics(local_fashion_mnist):
    dataset = local_fashion_mnist[0]
    mean, std = D.compute_mean_std(dataset["train"])
    assert mean == pytest.approx(D.FASHION_MNIST_MEAN, abs=5e-5)
    assert std == pytest.approx(D.FASHION_MNIST_STD, abs=5e-5)


# ------------------------------------------------------------------------------------------------------------
# PNG encoding and IDX validation
# ------------------------------------------------------------------------------------------------------------


def _strict_png_pixels(data: bytes) -> np.ndarray:
    """Parse a grayscale PNG checking every CRC and the zlib Adler-32; returns the pixels."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", None, None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(kind + body), kind
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    rows = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, width + 1)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:]


@pytest.mark.parametrize("compress", [False, True])
def test_png_batch_is_valid_and_lossless(fashion_mnist_arrays, compress):
    images = fashion_mnist_arrays["test"][0][:64]
    odd = np.random.default_rng(0).integers(0, 256, size=(5, 7, 13), dtype=np.uint8)
    for batch in (images, odd):
        encoded = D.encode_png_batch(batch, compress=compress)
        for png, array in zip(encoded, batch):
            assert (_strict_png_pixels(png) == array).all()
            decoded = PILImage.open(io.BytesIO(png))
            assert decoded.mode == "L" and (np.asarray(decoded) == array).all()


@pytest.fixture
def idx_dir(tiny_idx_dir, tmp_path):
    folder = tmp_path / "idx"
    shutil.copytree(tiny_idx_dir, folder)
    return folder


def test_tiny_idx_dir_loads_through_the_same_path(idx_dir, tmp_path, fashion_mnist_arrays):
    dataset = D.load_local_fashion_mnist(idx_dir, cache_dir=tmp_path / "cache", expected_counts=None)
    assert dict(dataset.num_rows) == {"train": TINY_TRAIN, "test": TINY_TEST}
    assert dataset["train"].features == D.fashion_mnist_features()
    assert dataset["train"]["label"] == fashion_mnist_arrays["train"][1][:TINY_TRAIN].tolist()
    # Raw (uncompressed) files and torchvision's FashionMNIST/raw layout are found too.
    raw = tmp_path / "d2l" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in idx_dir.iterdir():
        (raw / path.name.removesuffix(".gz")).write_bytes(gzip.decompress(path.read_bytes()))
    again = D.load_local_fashion_mnist(tmp_path / "d2l", expected_counts=None, use_cache=False)
    assert again["test"]["label"] == dataset["test"]["label"]


def _corrupt(path, data: bytes):
    path.write_bytes(gzip.compress(data))


@pytest.mark.parametrize(
    "case, match",
    [
        ("bad_magic", "does not start with an IDX magic number"),
        ("truncated_gzip", "not a complete gzip file"),
        ("truncated_payload", "is truncated: its header declares shape"),
        ("trailing_bytes", "longer than its header says"),
        ("swapped", "has 1 dimensions, expected 3"),
        ("count_mismatch", "holds 600 images but .* holds 599 labels"),
        ("label_range", r"labels in \[0, 12\]"),
    ],
)
def test_corrupted_idx_files_raise_clear_errors(idx_dir, case, match):
    images = idx_dir / "train-images-idx3-ubyte.gz"
    labels = idx_dir / "train-labels-idx1-ubyte.gz"
    raw = gzip.decompress(images.read_bytes())
    if case == "bad_magic":
        _corrupt(images, b"\x08\x03\x00\x00" + raw[4:])
    elif case == "truncated_gzip":
        images.write_bytes(images.read_bytes()[: images.stat().st_size // 2])
    elif case == "truncated_payload":
        _corrupt(images, raw[:-100])
    elif case == "trailing_bytes":
        _corrupt(images, raw + b"\x00" * 10)
    elif case == "swapped":
        images.write_bytes(labels.read_bytes())
    elif case == "count_mismatch":
        label_array = D.read_idx(labels)
        write_idx(labels, label_array[:-1])
    elif case == "label_range":
        label_array = D.read_idx(labels).copy()
        label_array[3] = 12
        write_idx(labels, label_array)
    with pytest.raises(D.IDXFormatError, match=match) as info:
        D.load_local_fashion_mnist(idx_dir, expected_counts=None, use_cache=False)
    message = str(info.value)
    assert "train-" in message  # names the file
    if case not in ("swapped", "count_mismatch"):
        assert "apt-get install --reinstall dataset-fashion-mnist" in message  # says how to fix it


def test_wrong_split_size_is_rejected(idx_dir):
    with pytest.raises(D.IDXFormatError, match="holds 600 images; Fashion-MNIST's split has 60,000"):
        D.load_local_fashion_mnist(idx_dir, use_cache=False)


# ------------------------------------------------------------------------------------------------------------
# Missing data: fast, helpful failures; installing the Debian package
# ------------------------------------------------------------------------------------------------------------


def test_missing_data_dir_fails_fast_offline(tmp_path):
    script = f"""
import json, time
from hf_vit_d2l import data as D
D.DEFAULT_DATA_DIR = {str(tmp_path / "nowhere")!r}
out = {{}}
for kwargs in ({{"source": "local", "data_dir": {str(tmp_path / "missing")!r}}}, {{"source": "auto"}}):
    start = time.perf_counter()
    try:
        D.load_fashion_mnist(cache_dir={str(tmp_path / "cache")!r}, **kwargs)
        out[kwargs["source"]] = ["loaded", 0]
    except D.DataUnavailableError as err:
        out[kwargs["source"]] = [str(err), time.perf_counter() - start]
print(json.dumps(out))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for source, (message, seconds) in out.items():
        assert seconds < 5.0, (source, seconds)
        assert "apt-get install dataset-fashion-mnist" in message and "--data_dir" in message
    assert "missing does not exist" in out["local"][0]
    assert "HF_HUB_OFFLINE is set" in out["auto"][0]


@pytest.mark.parametrize("endpoint", ["http://10.255.255.1", "https://10.255.255.1:8443", "http://127.0.0.1:9"])
def test_hub_probe_is_bounded_and_strict(endpoint, monkeypatch):
    # Unroutable (the connection hangs), a port nobody listens on, or a gateway answering any address with an
    # error status: none is the Hub, and the probe says so within its time-out.
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    start = time.perf_counter()
    assert D.hub_is_reachable(timeout=1.0) is False
    assert time.perf_counter() - start < 1.5


def test_hub_probe_accepts_a_real_answer(monkeypatch):
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 (http.server's naming)
            self.send_response(200 if self.path == "/api/datasets/zalando-datasets/fashion_mnist" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        assert D.hub_is_reachable(timeout=2.0) is True
    finally:
        server.shutdown()


def test_ensure_local_installs_the_debian_package_as_root(tiny_idx_dir, tmp_path, monkeypatch, caplog):
    target = tmp_path / "fashion-mnist"
    commands = []

    def fake_apt(command):
        commands.append(command)
        if command[:2] == ["apt-get", "install"]:
            shutil.copytree(tiny_idx_dir, target)
        return 0

    monkeypatch.setattr(D, "DEFAULT_DATA_DIR", str(target))
    monkeypatch.setattr(D, "_run_command", fake_apt)
    monkeypatch.setattr(D, "_is_debian_based", lambda: True)
    monkeypatch.setattr(D.os, "geteuid", lambda: 0)
    with caplog.at_level("WARNING", logger="hf_vit_d2l.data"):
        assert D.ensure_local_fashion_mnist(auto_install=True) == target
    assert commands == [["apt-get", "update"], ["apt-get", "install", "-y", "dataset-fashion-mnist"]]
    assert any("apt-get install -y dataset-fashion-mnist" in r.getMessage() for r in caplog.records)
    assert D.ensure_local_fashion_mnist(auto_install=True) == target and len(commands) == 2  # already there


def test_ensure_local_without_root_prints_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "DEFAULT_DATA_DIR", str(tmp_path / "absent"))
    monkeypatch.setattr(D, "_run_command", lambda command: pytest.fail("must not run apt-get"))
    monkeypatch.setattr(D, "_is_debian_based", lambda: True)
    monkeypatch.setattr(D.os, "geteuid", lambda: 1000)
    with pytest.raises(D.DataUnavailableError, match="sudo apt-get install -y dataset-fashion-mnist"):
        D.ensure_local_fashion_mnist(auto_install=True)
    monkeypatch.setattr(D.os, "geteuid", lambda: 0)
    with pytest.raises(D.DataUnavailableError, match="apt-get install dataset-fashion-mnist"):
        D.ensure_local_fashion_mnist(auto_install=False)


# ------------------------------------------------------------------------------------------------------------
# Generic datasets: parquet in the Hub schema, renamed columns, image folders
# ------------------------------------------------------------------------------------------------------------


def test_parquet_hub_schema_dataset(tiny_parquet_dataset, fashion_mnist_arrays):
    files = {"train": tiny_parquet_dataset["train"], "test": tiny_parquet_dataset["test"]}
    direct = load_dataset("parquet", data_files=files)
    assert direct["train"].features == D.fashion_mnist_features()
    for loaded in (
        D.load_image_classification_dataset(dataset_name="parquet", data_files=files),
        D.load_image_classification_dataset(dataset_name=tiny_parquet_dataset["dir"]),
    ):
        assert dict(loaded.num_rows) == {"train": TINY_TRAIN, "test": TINY_TEST}
        assert loaded["test"].features == D.fashion_mnist_features()
        assert loaded["train"]["label"] == fashion_mnist_arrays["train"][1][:TINY_TRAIN].tolist()
        assert (np.asarray(loaded["test"][0]["image"]) == fashion_mnist_arrays["test"][0][0]).all()


def test_missing_label_column_lists_columns_and_flag(tiny_parquet_dataset):
    files = {"train": tiny_parquet_dataset["train"], "test": tiny_parquet_dataset["test"]}
    with pytest.raises(ValueError, match=r"no column 'labels'; its columns are \['image', 'label'\]") as info:
        D.load_image_classification_dataset(dataset_name="parquet", data_files=files, label_column_name="labels")
    assert "--label_column_name" in str(info.value)
    with pytest.raises(ValueError, match="--image_column_name"):
        D.load_image_classification_dataset(dataset_name="parquet", data_files=files, image_column_name="img")


def test_custom_columns_string_labels_and_validation_split(tiny_parquet_dataset, tmp_path):
    base = load_dataset("parquet", data_files={"train": tiny_parquet_dataset["train"]})["train"].select(range(120))
    names = base.features["label"].names
    custom = Dataset.from_dict(
        {"img": base["image"], "target": [names[i] for i in base["label"]], "extra": list(range(120))},
    ).cast_column("img", Image())
    custom.select(range(100)).to_parquet(tmp_path / "train.parquet")
    custom.select(range(100, 120)).to_parquet(tmp_path / "validation.parquet")
    loaded = D.load_image_classification_dataset(
        dataset_name=str(tmp_path), image_column_name="img", label_column_name="target"
    )
    assert list(loaded) == ["train", "test"] and dict(loaded.num_rows) == {"train": 100, "test": 20}
    assert loaded["train"].column_names == ["image", "label"]
    label = loaded["train"].features["label"]
    assert isinstance(label, ClassLabel) and label.names == sorted(set(custom["target"]))
    assert [label.names[i] for i in loaded["test"]["label"]] == custom["target"][100:]


def test_image_folders(fashion_mnist_arrays, tmp_path):
    images, labels = fashion_mnist_arrays["test"]
    for split, indices in (("train", range(0, 40)), ("val", range(40, 60))):
        for i in indices:
            folder = tmp_path / split / FASHION_MNIST_LABELS[labels[i]].replace(" / ", "-").replace(" ", "")
            folder.mkdir(parents=True, exist_ok=True)
            PILImage.fromarray(images[i], mode="L").save(folder / f"{i}.png")
    loaded = D.load_image_classification_dataset(train_dir=tmp_path / "train", validation_dir=tmp_path / "val")
    assert dict(loaded.num_rows) == {"train": 40, "test": 20}
    names = loaded["train"].features["label"].names
    assert "Ankleboot" in names and loaded["train"][0]["image"].size == (28, 28)
    with pytest.raises(D.DataUnavailableError, match="does not exist"):
        D.load_image_classification_dataset(train_dir=tmp_path / "nope")


def test_train_validation_split_is_stratified_and_seeded(tiny_parquet_dataset):
    train = load_dataset("parquet", data_files={"train": tiny_parquet_dataset["train"]})["train"]
    split = D.train_validation_split(train, validation_size=100, seed=42)
    assert dict(split.num_rows) == {"train": TINY_TRAIN - 100, "validation": 100}
    full = np.bincount(train["label"], minlength=10) / len(train)
    part = np.bincount(split["validation"]["label"], minlength=10)
    assert np.abs(part - full * 100).max() <= 1.0  # each class keeps its share, to one example
    again = D.train_validation_split(train, validation_size=100, seed=42)
    assert again["validation"]["label"] == split["validation"]["label"]
    other = D.train_validation_split(train, validation_size=100, seed=1)
    assert other["validation"]["label"] != split["validation"]["label"]


# ------------------------------------------------------------------------------------------------------------
# Collator, backends, transforms
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def examples(tiny_parquet_dataset):
    dataset = load_dataset("parquet", data_files={"train": tiny_parquet_dataset["train"]})["train"]
    return [dataset[i] for i in range(64)]


def test_collator_equals_the_image_processor(examples):
    processor = ViTD2LImageProcessor()
    batch = D.ImageClassificationCollator(processor)(examples)
    expected = processor([e["image"] for e in examples], return_tensors="pt")["pixel_values"]
    assert batch["pixel_values"].shape == (64, 1, 96, 96) and batch["pixel_values"].dtype == torch.float32
    assert torch.equal(batch["pixel_values"], expected)
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [e["label"] for e in examples]
    assert batch["pixel_values"].min() >= 0.0 and batch["pixel_values"].max() <= 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"size": {"height": 32, "width": 32}},
        {"size": {"height": 20, "width": 20}},  # shrinking: antialiased like PIL
        {"do_normalize": True, "image_mean": [D.FASHION_MNIST_MEAN], "image_std": [D.FASHION_MNIST_STD]},
    ],
)
def test_tensor_backend_within_one_level_of_pil(examples, kwargs):
    processor = ViTD2LImageProcessor(**kwargs)
    pil = D.ImageClassificationCollator(processor)(examples)["pixel_values"]
    fast = D.ImageClassificationCollator(processor, backend="tensor")(examples)["pixel_values"]
    assert fast.shape == pil.shape and fast.dtype == pil.dtype
    scale = 255.0 * (D.FASHION_MNIST_STD if kwargs.get("do_normalize") else 1.0)
    assert (fast - pil).abs().max().item() * scale <= 1.0 + 1e-4
    assert (fast != pil).float().mean().item() < 0.2


def test_tensor_backend_is_exact_without_resize(examples):
    processor = ViTD2LImageProcessor(size={"height": 28, "width": 28})
    pil = D.ImageClassificationCollator(processor)(examples)["pixel_values"]
    assert torch.equal(D.ImageClassificationCollator(processor, backend="tensor")(examples)["pixel_values"], pil)


@pytest.mark.parametrize("backend", ["pil", "tensor"])
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"size": {"height": 28, "width": 28}, "do_normalize": True}, {"size": {"height": 20, "width": 20}}],
)
def test_preloaded_rows_give_the_same_batches(tiny_parquet_dataset, backend, kwargs):
    dataset = load_dataset("parquet", data_files={"train": tiny_parquet_dataset["train"]})["train"].select(range(64))
    preloaded = D.PreloadedImageDataset(dataset)
    assert len(preloaded) == 64 and preloaded.images.shape == (64, 28, 28) and preloaded.images.dtype == np.uint8
    rows = preloaded.__getitems__(list(range(64)))
    assert np.array_equal(rows[5]["image"], np.asarray(dataset[5]["image"]))
    assert rows[5]["label"] == dataset[5]["label"]
    collator = D.ImageClassificationCollator(ViTD2LImageProcessor(**kwargs), backend=backend)
    expected = collator([dataset[i] for i in range(64)])
    batch = collator(rows)
    assert torch.equal(batch["pixel_values"], expected["pixel_values"])
    assert torch.equal(batch["labels"], expected["labels"])


def test_preload_refuses_mixed_sizes_with_the_flag_to_change():
    images = [PILImage.new("L", (28, 28)), PILImage.new("L", (32, 32))]
    dataset = Dataset.from_dict({"image": images, "label": [0, 1]}).cast_column("image", Image())
    with pytest.raises(ValueError, match="differ in size or mode.*--preload_images false"):
        D.PreloadedImageDataset(dataset)
    with pytest.raises(ValueError, match="no 'target' column"):
        D.PreloadedImageDataset(dataset, label_column="target")
    with pytest.raises(ValueError, match=r"2 images of \(28, 28\) would take .* GiB.*--preload_images false"):
        D.PreloadedImageDataset(dataset, max_bytes=1000)


def test_collator_errors(examples):
    processor = ViTD2LImageProcessor()
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        D.ImageClassificationCollator(processor)([{"pixel_values": 0}])
    with pytest.raises(ValueError, match="augment must be"):
        D.ImageClassificationCollator(processor, augment="randaugment")
    with pytest.raises(ValueError, match="backend must be"):
        D.ImageClassificationCollator(processor, backend="cuda")
    with pytest.raises(ValueError, match="remove_unused_columns"):
        D.check_keeps_raw_columns(type("Args", (), {"remove_unused_columns": True})())
    D.check_keeps_raw_columns(type("Args", (), {"remove_unused_columns": False})())


def test_improved_augmentation_shape_and_determinism(examples):
    processor = ViTD2LImageProcessor()
    clean = D.ImageClassificationCollator(processor)(examples)["pixel_values"]
    first = D.ImageClassificationCollator(processor, augment="improved", seed=0)(examples)["pixel_values"]
    again = D.ImageClassificationCollator(processor, augment="improved", seed=0)(examples)["pixel_values"]
    other = D.ImageClassificationCollator(processor, augment="improved", seed=1)(examples)["pixel_values"]
    assert first.shape == clean.shape and first.dtype == torch.float32
    assert torch.equal(first, again) and not torch.equal(first, other) and not torch.equal(first, clean)
    book = D.ImageClassificationCollator(processor, augment="book", seed=0)(examples)["pixel_values"]
    assert torch.equal(book, clean)


def test_each_augmentation_does_what_it_says(examples):
    processor = ViTD2LImageProcessor(size={"height": 28, "width": 28})
    clean = D.ImageClassificationCollator(processor)(examples)["pixel_values"]
    kwargs = {"augment": "improved", "seed": 3}
    flip = D.ImageClassificationCollator(processor, crop_padding=0, flip_prob=1.0, erasing_prob=0.0, **kwargs)
    assert torch.equal(flip.augment_batch(clean), clean.flip(-1))
    crop = D.ImageClassificationCollator(processor, crop_padding=2, flip_prob=0.0, erasing_prob=0.0, **kwargs)
    cropped = crop.augment_batch(clean)
    padded = torch.nn.functional.pad(clean, (2, 2, 2, 2))
    shifts = [(dy, dx) for dy in range(5) for dx in range(5)]
    for out, src in zip(cropped, padded):  # each output is one 28x28 window of the zero-padded input
        assert any(torch.equal(out, src[:, dy : dy + 28, dx : dx + 28]) for dy, dx in shifts)
    assert sum(not torch.equal(a, b) for a, b in zip(cropped, clean)) > 40
    erase = D.ImageClassificationCollator(processor, crop_padding=0, flip_prob=0.0, erasing_prob=1.0, **kwargs)
    erased = erase.augment_batch(torch.ones_like(clean))
    zero_fraction = (erased == 0).float().mean(dim=(1, 2, 3))
    assert (zero_fraction >= 0.015).all() and (zero_fraction <= 0.34).all()
    # with normalisation, the crop pads with the value of black, not with 0
    normalised = ViTD2LImageProcessor(do_normalize=True, image_mean=[0.286], image_std=[0.353])
    pad_only = D.ImageClassificationCollator(normalised, crop_padding=4, flip_prob=0.0, erasing_prob=0.0, **kwargs)
    out = pad_only.augment_batch(torch.full((8, 1, 28, 28), 5.0))
    values = torch.unique(out)
    assert len(values) == 2 and values[1] == 5.0 and values[0].item() == pytest.approx(-0.286 / 0.353)


def test_with_image_transform_keeps_the_image_column(tiny_parquet_dataset):
    dataset = load_dataset("parquet", data_files={"test": tiny_parquet_dataset["test"]})["test"]
    transformed = D.with_image_transform(dataset, ViTD2LImageProcessor(size={"height": 32, "width": 32}))
    assert transformed.column_names == ["image", "label"]
    row = transformed[0]
    assert row["pixel_values"].shape == (1, 32, 32) and int(row["labels"]) == dataset[0]["label"]
    batch = transformed[:8]
    assert batch["pixel_values"].shape == (8, 1, 32, 32)


@pytest.mark.parametrize("backend", D.BACKENDS)
def test_measure_pipeline_throughput(tiny_parquet_dataset, backend):
    dataset = load_dataset("parquet", data_files={"train": tiny_parquet_dataset["train"]})["train"]
    processor = ViTD2LImageProcessor(size={"height": 32, "width": 32})
    result = D.measure_pipeline_throughput(dataset, processor, backend=backend, batch_size=32, num_batches=4)
    assert result["images"] == 4 * 32 and result["images_per_second"] > 0 and result["image_size"] == [32, 32]
    assert result["backend"] == backend and result["images_per_second"] == result["img_per_s"]
    collator = D.ImageClassificationCollator(processor, backend=backend)
    assert D.measure_pipeline_throughput(dataset, collator, batch_size=32, num_batches=2)["images"] == 64


def test_too_small_for_a_stratified_hold_out_says_what_to_do():
    images = [PILImage.new("L", (28, 28), color=i) for i in range(4)]
    features = {"image": Image(), "label": ClassLabel(names=["a", "b"])}
    from datasets import Features

    dataset = Dataset.from_dict({"image": images, "label": [0, 1, 0, 1]}, features=Features(features))
    with pytest.raises(ValueError, match=r"Cannot hold out 0.15 of 4 training images stratified over 2 classes.*"
                       r"--validation_dir"):  # fmt: skip
        D.train_validation_split(dataset, validation_size=0.15)
    parts = D.train_validation_split(dataset, validation_size=2)
    assert sorted(parts["validation"]["label"]) == [0, 1] and len(parts["train"]) == 2
