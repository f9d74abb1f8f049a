"""Tests of `hf_vit_d2l.data` on real Fashion-MNIST: loading (local IDX, parquet, image folders), validation,
errors, the collator (both backends), preloading and augmentation."""

import gzip
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import TINY_TEST, TINY_TRAIN, write_idx
from datasets import ClassLabel, Dataset, Features, Image, load_dataset
from PIL import Image as PILImage

from hf_vit_d2l import FASHION_MNIST_LABELS, ViTD2LImageProcessor
from hf_vit_d2l import data as D

# Known facts of the real files, measured once (`python -m hf_vit_d2l.data check`, numpy on the arrays).
FIRST_TRAIN_LABEL, FIRST_TRAIN_PIXEL_SUM = 9, 76247  # an "Ankle boot"
FIRST_TEST_LABEL, FIRST_TEST_PIXEL_SUM = 9, 33456


def test_real_files_shapes(fashion_mnist_arrays):
    (train_x, train_y), (test_x, test_y) = fashion_mnist_arrays["train"], fashion_mnist_arrays["test"]
    assert train_x.shape == (60_000, 28, 28)
    assert train_x.dtype == np.uint8
    assert test_x.shape == (10_000, 28, 28)
    assert test_y.shape == (10_000,)
    assert np.bincount(train_y).tolist() == [6000] * 10
    assert np.bincount(test_y).tolist() == [1000] * 10
    assert (int(train_y[0]), int(train_x[0].sum())) == (FIRST_TRAIN_LABEL, FIRST_TRAIN_PIXEL_SUM)
    assert (int(test_y[0]), int(test_x[0].sum())) == (FIRST_TEST_LABEL, FIRST_TEST_PIXEL_SUM)


def test_data_cli_check_and_stats(fashion_mnist_dir):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    check = subprocess.run([sys.executable, "-m", "hf_vit_d2l.data", "check"], capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stderr[-2000:]
    assert all(json.loads(check.stdout).values()), check.stdout
    assert len(json.loads(check.stdout)) == 4, check.stdout
    stats = subprocess.run([sys.executable, "-m", "hf_vit_d2l.data", "stats"], capture_output=True, text=True, env=env)
    assert stats.returncode == 0, stats.stderr[-2000:]
    values = json.loads(stats.stdout)
    assert values["images"] == 60_000
    assert values["mean"] == pytest.approx(D.FASHION_MNIST_MEAN, abs=5e-5)
    assert values["std"] == pytest.approx(D.FASHION_MNIST_STD, abs=5e-5)


@pytest.fixture(scope="module")
def local_fashion_mnist(fashion_mnist_dir):
    dataset, _ = D.load_fashion_mnist(source="local")
    start = time.perf_counter()
    again, _ = D.load_fashion_mnist(source="local")
    return dataset, again, time.perf_counter() - start


def test_local_load_has_the_hub_schema(local_fashion_mnist, fashion_mnist_arrays):
    dataset, again, second = local_fashion_mnist
    assert dict(dataset.num_rows) == {"train": 60_000, "test": 10_000}
    for split in ("train", "test"):
        assert dataset[split].features == D.fashion_mnist_features()
        assert dataset[split].features["label"].names == FASHION_MNIST_LABELS
    example = dataset["train"][0]
    assert example["image"].mode == "L"
    assert example["image"].size == (28, 28)
    assert example["label"] == FIRST_TRAIN_LABEL
    assert int(np.asarray(example["image"]).sum()) == FIRST_TRAIN_PIXEL_SUM
    # Pixels and labels equal the IDX arrays across the split (spot checks over the whole range).
    for split in ("train", "test"):
        images, labels = fashion_mnist_arrays[split]
        indices = np.linspace(0, len(labels) - 1, 25).astype(int).tolist()
        rows = dataset[split].select(indices)
        assert rows["label"] == labels[indices].tolist()
        differing = [i for im, i in zip(rows["image"], indices) if not (np.asarray(im) == images[i]).all()]
        assert not differing, f"{split} rows whose pixels differ from the IDX file: {differing}"
    assert second < 5.0  # datasets' cache of the conversion
    assert again["test"][0]["label"] == FIRST_TEST_LABEL


def test_auto_uses_local_copy_with_one_log_line(local_fashion_mnist, monkeypatch, caplog):
    monkeypatch.setattr(D, "hub_available", lambda: False)
    with caplog.at_level("INFO", logger="hf_vit_d2l.data"):
        dataset, source = D.load_fashion_mnist(source="auto")
    assert dict(dataset.num_rows) == {"train": 60_000, "test": 10_000}
    lines = [r.getMessage() for r in caplog.records if r.name == "hf_vit_d2l.data"]
    assert len(lines) == 1, lines
    assert "not reachable" in lines[0]
    assert D.DEFAULT_DATA_DIR in lines[0]
    assert source == f"local IDX files in {D.DEFAULT_DATA_DIR}"


@pytest.fixture
def idx_dir(tiny_idx_dir, tmp_path):
    folder = tmp_path / "idx"
    shutil.copytree(tiny_idx_dir, folder)
    return folder


def test_tiny_idx_dir_loads_through_the_same_path(idx_dir, tmp_path, fashion_mnist_arrays):
    dataset = D.load_local_fashion_mnist(idx_dir, cache_dir=str(tmp_path / "cache"), check_counts=False)
    assert dict(dataset.num_rows) == {"train": TINY_TRAIN, "test": TINY_TEST}
    assert dataset["train"].features == D.fashion_mnist_features()
    assert dataset["train"]["label"] == fashion_mnist_arrays["train"][1][:TINY_TRAIN].tolist()
    # Raw (uncompressed) files and torchvision's FashionMNIST/raw layout are found too.
    raw = tmp_path / "d2l" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in idx_dir.iterdir():
        (raw / path.name.removesuffix(".gz")).write_bytes(gzip.decompress(path.read_bytes()))
    again = D.load_local_fashion_mnist(tmp_path / "d2l", cache_dir=str(tmp_path / "cache"), check_counts=False)
    assert again["test"]["label"] == dataset["test"]["label"]


def _corrupt(path, data: bytes):
    path.write_bytes(gzip.compress(data))


@pytest.mark.parametrize(
    "case, match",
    [
        ("bad_magic", "does not start with an IDX magic number"),
        ("truncated_gzip", "not a complete gzip file"),
        ("truncated_payload", r"is truncated or too long: its header declares shape \(600, 28, 28\)"),
        ("trailing_bytes", "is truncated or too long"),
        ("swapped", "has 1 dimensions and .* 1, expected 3 and 1: check that the images and labels files are not"),
        ("count_mismatch", "holds 600 images but .* 599 labels"),
        ("label_range", "holds labels up to 12"),
    ],
)
def test_corrupted_idx_files_raise_clear_errors(idx_dir, tmp_path, case, match):
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
        write_idx(labels, D.read_idx(labels)[:-1])
    elif case == "label_range":
        label_array = D.read_idx(labels).copy()
        label_array[3] = 12
        write_idx(labels, label_array)
    with pytest.raises(D.IDXFormatError, match=match) as info:
        D.load_local_fashion_mnist(idx_dir, cache_dir=str(tmp_path / "cache"), check_counts=False)
    message = str(info.value)
    assert "train-" in message  # names the file
    if case not in ("swapped",):
        assert "apt-get install --reinstall dataset-fashion-mnist" in message  # says how to fix it


def test_wrong_split_size_is_rejected(idx_dir, tmp_path):
    with pytest.raises(D.IDXFormatError, match="holds 600 images; Fashion-MNIST's split has 60,000"):
        D.load_local_fashion_mnist(idx_dir, cache_dir=str(tmp_path / "cache"))


def test_missing_data_fails_fast_offline_and_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "DEFAULT_DATA_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setattr(D, "hub_available", lambda: False)
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", True)  # the datasets cache is tried, and is empty
    for kwargs in ({"source": "local", "data_dir": str(tmp_path / "missing")}, {"source": "auto"}):
        start = time.perf_counter()
        with pytest.raises(D.DataUnavailableError) as info:
            D.load_fashion_mnist(cache_dir=str(tmp_path / "cache"), **kwargs)
        assert time.perf_counter() - start < 10
        assert "sudo apt-get install dataset-fashion-mnist" in str(info.value)
        assert "--data_dir" in str(info.value)
    with pytest.raises(D.DataUnavailableError, match="not reachable"):
        D.load_fashion_mnist(cache_dir=str(tmp_path / "cache"))


def test_hub_dataset_id_for_model_cards(tmp_path):
    assert D.hub_dataset_id(D.DataArguments()) == D.HUB_DATASET_ID
    assert D.hub_dataset_id(D.DataArguments(dataset_name="fashion_mnist")) == D.HUB_DATASET_ID
    assert D.hub_dataset_id(D.DataArguments(dataset_name="user/cifar")) == "user/cifar"
    assert D.hub_dataset_id(D.DataArguments(dataset_name=str(tmp_path))) is None
    assert D.hub_dataset_id(D.DataArguments(train_dir=str(tmp_path))) is None


# ------------------------------------------------------------------------------------------------------------
# Generic datasets: parquet in the Hub schema, renamed columns, image folders
# ------------------------------------------------------------------------------------------------------------


def test_parquet_hub_schema_dataset(tiny_parquet_dataset, fashion_mnist_arrays):
    files = {"train": tiny_parquet_dataset["train"], "test": tiny_parquet_dataset["test"]}
    direct = load_dataset("parquet", data_files=files)
    assert direct["train"].features == D.fashion_mnist_features()
    for loaded, _ in (D.load_image_classification_dataset(D.DataArguments(dataset_name=tiny_parquet_dataset["dir"])),):
        assert dict(loaded.num_rows) == {"train": TINY_TRAIN, "test": TINY_TEST}
        assert loaded["test"].features == D.fashion_mnist_features()
        assert loaded["train"]["label"] == fashion_mnist_arrays["train"][1][:TINY_TRAIN].tolist()
        assert (np.asarray(loaded["test"][0]["image"]) == fashion_mnist_arrays["test"][0][0]).all()


def test_missing_label_column_lists_columns_and_flag(tiny_parquet_dataset):
    folder = tiny_parquet_dataset["dir"]
    with pytest.raises(ValueError, match=r"no column 'labels'; its columns are \['image', 'label'\]") as info:
        D.load_image_classification_dataset(D.DataArguments(dataset_name=folder, label_column_name="labels"))
    assert "--label_column_name" in str(info.value)
    with pytest.raises(ValueError, match="--image_column_name"):
        D.load_image_classification_dataset(D.DataArguments(dataset_name=folder, image_column_name="img"))


def test_custom_columns_string_labels_and_validation_split(tiny_parquet_dataset, tmp_path):
    base = load_dataset("parquet", data_files={"train": tiny_parquet_dataset["train"]})["train"].select(range(120))
    names = base.features["label"].names
    custom = Dataset.from_dict(
        {"img": base["image"], "target": [names[i] for i in base["label"]], "extra": list(range(120))},
    ).cast_column("img", Image())
    custom.select(range(100)).to_parquet(tmp_path / "train.parquet")
    custom.select(range(100, 120)).to_parquet(tmp_path / "validation.parquet")
    args = D.DataArguments(dataset_name=str(tmp_path), image_column_name="img", label_column_name="target")
    loaded, description = D.load_image_classification_dataset(args)
    assert description == str(tmp_path)
    assert list(loaded) == ["train", "test"]
    assert dict(loaded.num_rows) == {"train": 100, "test": 20}
    assert loaded["train"].column_names == ["image", "label"]
    label = loaded["train"].features["label"]
    assert isinstance(label, ClassLabel)
    assert label.names == sorted(set(custom["target"]))
    assert [label.names[i] for i in loaded["test"]["label"]] == custom["target"][100:]


def test_image_folders(fashion_mnist_arrays, tmp_path):
    images, labels = fashion_mnist_arrays["test"]
    for split, indices in (("train", range(0, 40)), ("val", range(40, 60))):
        for i in indices:
            folder = tmp_path / split / FASHION_MNIST_LABELS[labels[i]].replace(" / ", "-").replace(" ", "")
            folder.mkdir(parents=True, exist_ok=True)
            PILImage.fromarray(images[i], mode="L").save(folder / f"{i}.png")
    args = D.DataArguments(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val"))
    loaded, _ = D.load_image_classification_dataset(args)
    assert dict(loaded.num_rows) == {"train": 40, "test": 20}
    names = loaded["train"].features["label"].names
    assert "Ankleboot" in names
    assert loaded["train"][0]["image"].size == (28, 28)
    with pytest.raises(D.DataUnavailableError, match="no such folder"):
        D.load_image_classification_dataset(D.DataArguments(train_dir=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match=r"Cannot hold out 0.15 of 40 .*\(--validation_dir"):  # 6 for 10 classes
        D.load_image_classification_dataset(D.DataArguments(train_dir=str(tmp_path / "train")))


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
    assert batch["pixel_values"].shape == (64, 1, 96, 96)
    assert batch["pixel_values"].dtype == torch.float32
    assert torch.equal(batch["pixel_values"], expected)
    assert batch["labels"].dtype == torch.long
    assert batch["labels"].tolist() == [e["label"] for e in examples]
    assert batch["pixel_values"].min() >= 0.0
    assert batch["pixel_values"].max() <= 1.0


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
    assert fast.shape == pil.shape
    assert fast.dtype == pil.dtype
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
    collator = D.ImageClassificationCollator(ViTD2LImageProcessor(**kwargs), backend=backend)
    preloaded = D.PreloadedImageDataset(dataset, collator.transform)
    assert len(preloaded) == 64
    assert preloaded.images.shape == (64, 28, 28)
    assert preloaded.images.dtype == np.uint8
    rows = preloaded.__getitems__(list(range(64)))
    expected = collator([dataset[i] for i in range(64)])
    assert torch.equal(torch.stack([r["pixel_values"] for r in rows]), expected["pixel_values"])
    assert [int(r["labels"]) for r in rows] == expected["labels"].tolist()
    assert torch.equal(preloaded[5]["pixel_values"], expected["pixel_values"][5])


def test_set_transform_gives_the_collator_batches(tiny_parquet_dataset):
    dataset = load_dataset("parquet", data_files={"test": tiny_parquet_dataset["test"]})["test"]
    collator = D.ImageClassificationCollator(ViTD2LImageProcessor(size={"height": 32, "width": 32}))
    expected = collator([dataset[i] for i in range(8)])
    dataset.set_transform(collator.transform)
    assert dataset[0]["pixel_values"].shape == (1, 32, 32)
    assert int(dataset[0]["labels"]) == expected["labels"][0]
    assert torch.equal(dataset[:8]["pixel_values"], expected["pixel_values"])


def test_preload_refuses_mixed_sizes_and_too_much_memory():
    images = [PILImage.new("L", (28, 28)), PILImage.new("L", (32, 32))]
    dataset = Dataset.from_dict({"image": images, "label": [0, 1]}).cast_column("image", Image())
    with pytest.raises(ValueError, match="different sizes or modes. Train without --preload_images"):
        D.PreloadedImageDataset(dataset, None)
    with pytest.raises(ValueError, match=r"Preloading 2 images of shape \(28, 28\) needs more than .* GiB"):
        D.PreloadedImageDataset(dataset, None, max_bytes=1000)


def test_collator_errors():
    processor = ViTD2LImageProcessor()
    with pytest.raises(ValueError, match="--remove_unused_columns false"):
        D.ImageClassificationCollator(processor)([{"pixel_values": 0}])
    with pytest.raises(ValueError, match="--preprocessing_backend 'cuda': use 'pil' or 'tensor'"):
        D.DataArguments(preprocessing_backend="cuda")
    with pytest.raises(ValueError, match="--augmentation 'randaugment'"):
        D.DataArguments(augmentation="randaugment")
    with pytest.raises(ValueError, match="--crop_padding must be >= 0"):
        D.DataArguments(crop_padding=-1)


def test_improved_augmentation_draws_from_the_seeded_global_rng(examples):
    processor = ViTD2LImageProcessor()
    clean = D.ImageClassificationCollator(processor)(examples)["pixel_values"]
    augmenting = D.ImageClassificationCollator(processor, augment=True)
    torch.manual_seed(0)
    first = augmenting(examples)["pixel_values"]
    torch.manual_seed(0)
    again = augmenting(examples)["pixel_values"]
    other = augmenting(examples)["pixel_values"]
    assert first.shape == clean.shape
    assert first.dtype == torch.float32
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, clean)


def test_each_augmentation_does_what_it_says(examples):
    processor = ViTD2LImageProcessor(size={"height": 28, "width": 28})
    clean = D.ImageClassificationCollator(processor)(examples)["pixel_values"]
    torch.manual_seed(3)
    flip = D.ImageClassificationCollator(processor, True, crop_padding=0, flip_prob=1.0, erasing_prob=0.0)
    assert torch.equal(flip.augment_batch(clean), clean.flip(-1))
    crop = D.ImageClassificationCollator(processor, True, crop_padding=2, flip_prob=0.0, erasing_prob=0.0)
    cropped = crop.augment_batch(clean)
    padded = torch.nn.functional.pad(clean, (2, 2, 2, 2))
    shifts = [(dy, dx) for dy in range(5) for dx in range(5)]
    for out, src in zip(cropped, padded):  # each output is one 28x28 window of the zero-padded input
        assert any(torch.equal(out, src[:, dy : dy + 28, dx : dx + 28]) for dy, dx in shifts), "not a 28x28 window"
    assert sum(not torch.equal(a, b) for a, b in zip(cropped, clean)) > 40
    erase = D.ImageClassificationCollator(processor, True, crop_padding=0, flip_prob=0.0, erasing_prob=1.0)
    erased = erase.augment_batch(torch.ones_like(clean))
    zero_fraction = (erased == 0).float().mean(dim=(1, 2, 3))
    assert (zero_fraction >= 0.015).all()
    assert (zero_fraction <= 0.34).all()
    # with normalisation, the crop pads with the value of black, not with 0
    normalised = ViTD2LImageProcessor(do_normalize=True, image_mean=[0.286], image_std=[0.353])
    pad_only = D.ImageClassificationCollator(normalised, True, crop_padding=4, flip_prob=0.0, erasing_prob=0.0)
    out = pad_only.augment_batch(torch.full((8, 1, 28, 28), 5.0))
    values = torch.unique(out)
    assert len(values) == 2
    assert values[1] == 5.0
    assert values[0].item() == pytest.approx(-0.286 / 0.353)


def test_too_small_for_a_stratified_hold_out_says_what_to_do():
    images = [PILImage.new("L", (28, 28), color=i) for i in range(4)]
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    dataset = Dataset.from_dict({"image": images, "label": [0, 1, 0, 1]}, features=features)
    with pytest.raises(
        ValueError,
        match=r"Cannot hold out 0.15 of 4 training images stratified over 2 classes.*"
        r"--validation_dir",
    ):
        D.train_validation_split(dataset, validation_size=0.15)
    parts = D.train_validation_split(dataset, validation_size=2)
    assert sorted(parts["validation"]["label"]) == [0, 1]
    assert len(parts["train"]) == 2
