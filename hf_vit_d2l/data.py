"""Data for the book's ViT: Fashion-MNIST from the Hub or from local IDX files, other image datasets, preprocessing.

Fashion-MNIST comes from the first source that works (:func:`load_fashion_mnist`): ``--data_dir``; the Hub; the IDX
files of Debian's ``dataset-fashion-mnist`` in :data:`DEFAULT_DATA_DIR`; offline, a Hub copy in the datasets cache.
Local files become a ``DatasetDict`` with the Hub's features, so later steps see one dataset whatever the source.
"""

import argparse
import gzip
import hashlib
import json
import logging
import math
import os
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import datasets.config
import huggingface_hub.constants
import numpy as np
import torch
import torch.nn.functional as F
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value, load_dataset
from PIL import Image as PILImage
from transformers import BaseImageProcessor

from .configuration_vit_d2l import FASHION_MNIST_LABELS
from .utils import hub_available

logger = logging.getLogger(__name__)

HUB_DATASET_ID = "zalando-datasets/fashion_mnist"
# Names under which callers may ask for Fashion-MNIST (the Hub id, its alias, the torchvision/d2l spelling).
FASHION_MNIST_NAMES = (HUB_DATASET_ID, "fashion_mnist", "fashion-mnist", "FashionMNIST")
DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLIT_SIZES = {"train": 60_000, "test": 10_000}
# md5 of the decompressed files (Debian's .gz files differ byte-wise from Zalando's but decompress to these).
IDX_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
# The training pixels' mean and std in [0, 1] (`python -m hf_vit_d2l.data stats`), for normalisation.
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
# Fixed, so every tuning run (--validation_size) holds out the same images.
VALIDATION_SEED = 42
_REFETCH = "Reinstall it (`sudo apt-get install --reinstall dataset-fashion-mnist`) or download it again."


class DataUnavailableError(RuntimeError):
    """The requested data is not on this machine and cannot be fetched; the message says how to get it."""


class IDXFormatError(ValueError):
    """An IDX file is corrupt, truncated or not what it should be; the message names the file and the fix."""


def fashion_mnist_features() -> Features:
    """The Hub dataset's features: ``image: Image()``, ``label: ClassLabel(names=FASHION_MNIST_LABELS)``."""
    return Features({"image": Image(), "label": ClassLabel(names=list(FASHION_MNIST_LABELS))})


# ----------------------------------------------------------------------------------------------------- IDX files


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:2] != b"\x1f\x8b":  # not gzip, whatever the file is called
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as err:
        raise IDXFormatError(f"{path} is not a complete gzip file ({err}); it is probably truncated. {_REFETCH}")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An unsigned-byte IDX file (gzip-compressed or raw) as a uint8 array; `IDXFormatError` names a damaged file."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or data[3] == 0:
        raise IDXFormatError(
            f"{path} does not start with an IDX magic number (got bytes {data[:4].hex(' ')}; expected 00 00 08 "
            f"<ndim>, e.g. 00 00 08 03 for images): it is not an IDX file or it is corrupt. {_REFETCH}"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header]) if len(data) >= header else None
    payload = len(data) - header
    if dims is None or payload != math.prod(dims):
        shape = "an unreadable shape" if dims is None else f"shape {tuple(dims)}"
        raise IDXFormatError(
            f"{path} is truncated or too long: its header declares {shape} but it holds {max(payload, 0):,} bytes "
            f"of data. {_REFETCH}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def find_fashion_mnist_files(data_dir: str | os.PathLike) -> dict[str, tuple[Path, Path]] | None:
    """The four IDX files (``.gz`` or raw) in ``data_dir`` or its torchvision/d2l ``FashionMNIST/raw``, or None."""
    root = Path(data_dir)
    for folder in (root, root / "FashionMNIST" / "raw", root / "raw"):
        found = {}
        for split, stems in IDX_FILES.items():
            paths = [next((folder / n for n in (s + ".gz", s) if (folder / n).is_file()), None) for s in stems]
            found[split] = tuple(paths)
        if all(p is not None for pair in found.values() for p in pair):
            return found
    return None


def _read_split(images_path: Path, labels_path: Path, expected: int | None) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    problem = None
    if (images.ndim, labels.ndim) != (3, 1):
        problem = f"{images_path} has {images.ndim} dimensions and {labels_path} {labels.ndim}, expected 3 and 1"
        problem += ": check that the images and labels files are not swapped"
    elif images.shape[1:] != (28, 28):
        problem = f"{images_path} holds images of shape {images.shape[1:]}, not 28x28"
    elif len(images) != len(labels):
        problem = f"{images_path} holds {len(images):,} images but {labels_path} {len(labels):,} labels"
    elif expected is not None and len(images) != expected:
        problem = f"{images_path} holds {len(images):,} images; Fashion-MNIST's split has {expected:,}"
    elif len(labels) and labels.max() >= len(FASHION_MNIST_LABELS):
        problem = f"{labels_path} holds labels up to {labels.max()}; Fashion-MNIST's are 0..9"
    if problem:
        raise IDXFormatError(f"{problem}. {_REFETCH}")
    return images, labels


def _idx_examples(images: np.ndarray, labels: np.ndarray):
    for image, label in zip(images, labels):
        yield {"image": image, "label": int(label)}


def load_local_fashion_mnist(
    data_dir: str | os.PathLike | None = None, cache_dir: str | None = None, check_counts: bool = True
) -> DatasetDict:
    """Fashion-MNIST from local IDX files as ``DatasetDict(train, test)`` with the Hub's features.

    datasets caches the conversion, keyed by the arrays. ``check_counts=False`` accepts splits of any size (slices
    of the real files, in tests).
    """
    data_dir = Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR)
    files = find_fashion_mnist_files(data_dir)
    if files is None:
        where = f"{data_dir} holds {sorted(p.name for p in data_dir.iterdir())}" if data_dir.is_dir() else "none"
        raise DataUnavailableError(
            f"The four Fashion-MNIST IDX files ({', '.join(s + '.gz' for v in IDX_FILES.values() for s in v)}) are "
            f"not in {data_dir} ({where}). {how_to_get_data()}"
        )
    splits = {}
    for split, (images_path, labels_path) in files.items():
        images, labels = _read_split(images_path, labels_path, SPLIT_SIZES[split] if check_counts else None)
        kwargs = {"images": images, "labels": labels}
        splits[split] = Dataset.from_generator(
            _idx_examples, features=fashion_mnist_features(), gen_kwargs=kwargs, cache_dir=cache_dir, split=split
        )
    return DatasetDict(splits)


def how_to_get_data() -> str:
    return (
        "To get Fashion-MNIST: on Debian/Ubuntu run `sudo apt-get install dataset-fashion-mnist` (the files land in "
        f"{DEFAULT_DATA_DIR} and are found automatically); or pass --data_dir with a folder holding the four IDX "
        "files from https://github.com/zalandoresearch/fashion-mnist; or give this machine access to the Hub "
        f"({HUB_DATASET_ID})."
    )


def _hub_source(repo_id: str, revision: str) -> str:
    """Where a Hub dataset was loaded from, for the run's data line: the endpoint, or offline the datasets cache."""
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return f"the datasets cache ({repo_id} at revision {revision})"
    return f"the Hub ({repo_id} at revision {revision}, {huggingface_hub.constants.ENDPOINT})"


def load_fashion_mnist(
    source: str = "auto", data_dir=None, cache_dir: str | None = None, revision: str = "main"
) -> tuple[DatasetDict, str]:
    """``(DatasetDict(train, test) with the Hub's features, where it came from)``: the first source that works
    (module docstring), or ``source="hub"``/``"local"``. ``revision``: the Hub dataset's branch, tag or commit."""
    if source not in ("auto", "hub", "local"):
        raise ValueError(f"--data_source {source!r}: use 'auto', 'hub' or 'local'.")
    if source == "local" or (source == "auto" and data_dir is not None):
        return load_local_fashion_mnist(data_dir, cache_dir), f"local IDX files in {data_dir or DEFAULT_DATA_DIR}"
    hub = source == "hub" or hub_available()
    if not hub and find_fashion_mnist_files(DEFAULT_DATA_DIR) is not None:
        logger.warning("The Hub is not reachable; loading Fashion-MNIST from the IDX files in %s.", DEFAULT_DATA_DIR)
        return load_local_fashion_mnist(DEFAULT_DATA_DIR, cache_dir), f"local IDX files in {DEFAULT_DATA_DIR}"
    if hub or datasets.config.HF_HUB_OFFLINE:  # offline, a copy downloaded earlier may be in the datasets cache
        try:
            dataset = load_dataset(HUB_DATASET_ID, cache_dir=cache_dir, revision=revision)  # splits: train, test
            return dataset, _hub_source(HUB_DATASET_ID, revision)
        except Exception as err:  # offline without a cached copy, or the Hub refused
            if hub:
                message = f"Cannot load {HUB_DATASET_ID} ({type(err).__name__}: {err})."
                raise DataUnavailableError(f"{message} {how_to_get_data()}") from None
    raise DataUnavailableError(
        f"Fashion-MNIST is not available: the Hub is not reachable and {DEFAULT_DATA_DIR} holds no copy. "
        + how_to_get_data()
    )


# ----------------------------------------------------------------------------------------- any image dataset


def _standardise(dataset: DatasetDict, image_column: str, label_column: str) -> DatasetDict:
    """Columns renamed to ``image``/``label`` (others dropped), images as ``Image()``, labels as a ``ClassLabel``."""
    for name, split in dataset.items():
        for flag, column in (("--image_column_name", image_column), ("--label_column_name", label_column)):
            if column not in split.column_names:
                raise ValueError(
                    f"Split {name!r} has no column {column!r}; its columns are {split.column_names}. Pass {flag} "
                    "with the right name."
                )
    dataset = dataset.select_columns([image_column, label_column])
    renames = {old: new for old, new in ((image_column, "image"), (label_column, "label")) if old != new}
    dataset = dataset.rename_columns(renames)
    if not isinstance(dataset["train"].features["image"], Image):
        dataset = dataset.cast_column("image", Image())
    if not isinstance(dataset["train"].features["label"], ClassLabel):
        # One ClassLabel over all splits (DatasetDict.class_encode_column would encode each split on its own).
        values = sorted({value for split in dataset.values() for value in split.unique("label")})
        names = ClassLabel(names=[str(value) for value in values])
        dataset = dataset.cast_column("label", Value("string")).cast_column("label", names)
    return dataset


def unreadable_image(path: str) -> str | None:
    """Why PIL cannot read the image file `path` (in words), or None. `Image.verify` checks the header and the file's
    structure, not the pixels: a damaged JPEG body still fails later."""
    try:
        with PILImage.open(path) as image:
            image.verify()
    except PILImage.UnidentifiedImageError:
        return "is empty (0 bytes)" if os.path.getsize(path) == 0 else "is not an image file that PIL can read"
    except PILImage.DecompressionBombError as err:
        return f"is over PIL's decompression-bomb limit ({err})"
    except Exception as err:  # PIL's format plugins raise OSError, SyntaxError, ValueError, struct.error ...
        return f"is damaged ({type(err).__name__}: {err})"
    return None


def check_image_folder(split: Dataset, source: str, root: str) -> None:
    """Refuse an image-folder split without two classes or with files PIL cannot read, before any training (the
    Trainer would stop at the first batch holding one). `source` names the flag and folder `root` in the message."""
    paths = [image["path"] for image in split.cast_column("image", Image(decode=False))["image"]]
    if split.column_names == ["image"]:  # datasets inferred no labels: one class folder, or images at several depths
        parents = sorted({os.path.relpath(os.path.dirname(path), root) for path in paths})
        if parents == ["."]:
            found = "all directly in the folder"
        elif len(parents) == 1:
            found = f"all in one class folder, {parents[0]!r}"
        else:
            found = f"at different depths (in {', '.join(repr(parent) for parent in parents[:4])})"
        raise ValueError(
            f"{source} needs at least two class folders at one depth, each holding its images "
            f"(<folder>/<class>/<image>); its {len(paths)} images are {found}."
        )
    reasons = {path: unreadable_image(path) for path in paths}
    broken = [path for path, reason in reasons.items() if reason is not None]
    if broken:
        raise ValueError(
            f"{broken[0]} {reasons[broken[0]]}: {len(broken)} of the {len(paths)} image files in {source} cannot be "
            "read. Remove or replace them."
        )


def load_image_classification_dataset(args: "DataArguments", cache_dir: str | None = None, seed: int = 42):
    """Any image-classification dataset as ``(DatasetDict(train, test), description of the source)``: Fashion-MNIST,
    image folders or ``load_dataset(--dataset_name)``. Evaluation uses ``test``, else ``validation``, else a
    stratified, seeded 15% of train."""
    name = args.dataset_name
    if args.train_dir or args.validation_dir:
        folders = {"train": args.train_dir, "validation": args.validation_dir}
        folders = {split: folder for split, folder in folders.items() if folder}
        for split, folder in folders.items():
            if not Path(folder).is_dir():
                raise DataUnavailableError(f"--{split}_dir {folder}: no such folder.")
            if not any(names for _, _, names in os.walk(folder)):
                raise DataUnavailableError(
                    f"--{split}_dir {folder} holds no files: it needs a folder of images per class "
                    "(<folder>/<class>/<image>)."
                )
        if name or not args.train_dir:
            raise ValueError("Pass --train_dir (and optionally --validation_dir), or --dataset_name, not both.")
        files = {split: os.path.join(folder, "**") for split, folder in folders.items()}
        dataset, description = load_dataset("imagefolder", data_files=files, cache_dir=cache_dir), args.train_dir
        for split, folder in folders.items():
            check_image_folder(dataset[split], f"--{split}_dir {folder}", folder)
    elif name is None or name in FASHION_MNIST_NAMES:
        dataset, description = load_fashion_mnist(args.data_source, args.data_dir, cache_dir, args.dataset_revision)
    elif not Path(name).exists() and not hub_available():
        raise DataUnavailableError(
            f"--dataset_name {name!r} is not a local path and the Hub is not reachable. Give a local folder "
            "(parquet/arrow/csv or image folders), or set HF_HUB_OFFLINE=1 to use a cached copy."
        )
    else:
        try:
            dataset = load_dataset(
                name,
                args.dataset_config_name,
                data_dir=args.data_dir,
                cache_dir=cache_dir,
                revision=args.dataset_revision,
            )
        except (FileNotFoundError, ConnectionError) as err:
            raise DataUnavailableError(f"Cannot load dataset {name!r}: {err}") from None
        description = name if Path(name).exists() else _hub_source(name, args.dataset_revision)
        if Path(name).is_dir():  # a local folder of class folders is an image folder too
            for split in dataset.values():
                if split.info.builder_name == "imagefolder":
                    check_image_folder(split, f"--dataset_name {name}", name)
    if "train" not in dataset:
        raise ValueError(f"The dataset has no 'train' split; its splits are {list(dataset)}.")
    evaluation = "test" if "test" in dataset else "validation" if "validation" in dataset else None
    splits = DatasetDict({k: dataset[k] for k in ("train", evaluation) if k})
    dataset = _standardise(splits, args.image_column_name, args.label_column_name)
    if evaluation is None:
        logger.warning("The dataset has no test or validation split: holding out 15%% of train (seed %d).", seed)
        held = train_validation_split(dataset["train"], 0.15, seed)
        return DatasetDict(train=held["train"], test=held["validation"]), description
    return DatasetDict(train=dataset["train"], test=dataset[evaluation]), description


def train_validation_split(dataset: Dataset, validation_size: int | float = 5000, seed: int = VALIDATION_SEED):
    """``DatasetDict(train, validation)`` from a training set: stratified by ``label``, seeded, deterministic."""
    try:
        parts = dataset.train_test_split(test_size=validation_size, seed=seed, stratify_by_column="label")
    except ValueError as err:  # e.g. "The test_size = 1 should be greater or equal to the number of classes = 2"
        raise ValueError(
            f"Cannot hold out {validation_size} of {len(dataset)} training images stratified over "
            f"{dataset.features['label'].num_classes} classes ({err}). Use more images, or give an evaluation set "
            "(--validation_dir, or a dataset with a test or validation split)."
        ) from None
    return DatasetDict(train=parts["train"], validation=parts["test"])


@dataclass
class DataArguments:
    """Where the images come from and how they are preprocessed. Default: Fashion-MNIST, the book's transform."""

    data_source: str = field(default="auto", metadata={"help": "Fashion-MNIST source: 'auto', 'hub' or 'local'."})
    data_dir: str | None = field(default=None, metadata={"help": "Folder with the four Fashion-MNIST IDX files."})
    dataset_name: str | None = field(default=None, metadata={"help": "Another dataset: a Hub id or a local folder."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's config (subset) name."})
    dataset_revision: str = field(default="main", metadata={"help": "The Hub dataset's branch, tag or commit."})
    train_dir: str | None = field(default=None, metadata={"help": "An image folder (one sub-folder per class)."})
    validation_dir: str | None = field(default=None, metadata={"help": "An image folder for evaluation."})
    image_column_name: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the class labels."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on a seeded subset of this size."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on a seeded subset of this size."})
    validation_size: float | None = field(default=None, metadata={"help": "Evaluate on held-out training images."})
    augmentation: str = field(
        default="none", metadata={"help": "'none' (the book) or 'improved' (crop, flip, erase)."}
    )
    crop_padding: int | None = field(default=None, metadata={"help": "Random-crop padding in pixels (0: no crop)."})
    erasing_prob: float = field(default=0.25, metadata={"help": "Random-erasing probability (improved)."})
    normalize: bool = field(default=False, metadata={"help": "Normalise with Fashion-MNIST's mean and std."})
    preprocessing_backend: str = field(
        default="pil", metadata={"help": "'pil' (the processor) or 'tensor' (batched)."}
    )
    preload_images: bool = field(default=False, metadata={"help": "Decode all images once, not every epoch."})

    def __post_init__(self):
        if self.preprocessing_backend not in ("pil", "tensor"):
            raise ValueError(f"--preprocessing_backend {self.preprocessing_backend!r}: use 'pil' or 'tensor'.")
        if self.augmentation not in ("none", "improved"):
            raise ValueError(f"--augmentation {self.augmentation!r}: use 'none' or 'improved'.")
        if self.crop_padding is not None and self.crop_padding < 0:
            raise ValueError(f"--crop_padding must be >= 0 pixels (0: no crop), got {self.crop_padding}.")
        size = self.validation_size
        if size is not None and (size <= 0 or (size > 1 and size != int(size))):
            raise ValueError(f"--validation_size {size:g}: give a count of images (>= 1) or a fraction below 1.")
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}.")
        if self.data_dir is not None and not os.path.isdir(self.data_dir):
            raise ValueError(f"--data_dir {self.data_dir}: no such folder. {how_to_get_data()}")


def _subset(dataset: Dataset, count: int | None, seed: int) -> Dataset:
    return dataset if count is None or count >= len(dataset) else dataset.shuffle(seed=seed).select(range(count))


def load_splits(args: DataArguments, seed: int = 42, cache_dir: str | None = None):
    """``(train, evaluation, label_names, description)`` for a run: the test split, or with ``validation_size``
    the held-out training images; ``max_*_samples`` subsets (seeded)."""
    dataset, description = load_image_classification_dataset(args, cache_dir, seed)
    train, evaluation = dataset["train"], dataset["test"]
    if args.validation_size is not None:
        size = args.validation_size
        count = round(size * len(train)) if size < 1 else int(size)
        if not 0 < count < len(train):
            raise ValueError(f"--validation_size {size:g}: hold out between 1 and {len(train) - 1} images.")
        parts = train_validation_split(train, count, VALIDATION_SEED)
        train, evaluation = parts["train"], parts["validation"]
        description += f", evaluated on {count} held-out training images (seed {VALIDATION_SEED})"
    train = _subset(train, args.max_train_samples, seed)
    evaluation = _subset(evaluation, args.max_eval_samples, seed)
    return train, evaluation, list(train.features["label"].names), description


def hub_dataset_id(args: DataArguments) -> str | None:
    """The Hub id to name in a model card's metadata: Fashion-MNIST's whatever its source, else --dataset_name."""
    if args.train_dir or args.validation_dir:
        return None
    if args.dataset_name is None or args.dataset_name in FASHION_MNIST_NAMES:
        return HUB_DATASET_ID
    return None if Path(args.dataset_name).exists() else args.dataset_name


# ---------------------------------------------------------------------------------------------- preprocessing


@dataclass
class ImageClassificationCollator:
    """The model's image processor on rows ``{"image", "label"}``, as a DataLoader ``collate_fn`` or as
    ``Dataset.set_transform(collator.transform)`` (with the Trainer, ``remove_unused_columns=False``).

    ``backend="pil"`` calls the processor, as inference does; ``"tensor"`` resizes the whole batch with
    ``F.interpolate`` (within 1/255 of PIL), for images of one size. ``augment``: the improved recipes' random crop,
    flip and random erasing, drawn from torch's global RNG, which the Trainer seeds and its checkpoints restore.
    """

    image_processor: BaseImageProcessor
    augment: bool = False
    backend: str = "pil"
    crop_padding: int | None = None
    flip_prob: float = 0.5
    erasing_prob: float = 0.25

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        if not examples or "image" not in examples[0]:
            keys = sorted(examples[0]) if examples else []
            raise ValueError(
                f"Examples have the keys {keys}, expected 'image' and 'label'. With the Trainer pass "
                "--remove_unused_columns false, which otherwise drops the columns the model does not take."
            )
        return self.transform({key: [example[key] for example in examples] for key in ("image", "label")})

    def transform(self, batch: dict) -> dict[str, torch.Tensor]:
        """Columns ``image`` and ``label`` -> ``pixel_values`` (B, C, H, W) float32 and ``labels`` (B,) int64."""
        images = batch["image"]
        if self.backend == "pil":
            pixel_values = self.image_processor(list(images), return_tensors="pt")["pixel_values"].float()
        else:
            pixel_values = self._tensor_preprocess(images)
        if self.augment:
            pixel_values = self.augment_batch(pixel_values)
        return {"pixel_values": pixel_values, "labels": torch.as_tensor(np.asarray(batch["label"]), dtype=torch.long)}

    def _tensor_preprocess(self, images) -> torch.Tensor:
        processor = self.image_processor
        mode = "L" if processor.num_channels == 1 else "RGB"
        # PIL images take the processor's own rule (RGB as in `pipeline`, then luma); arrays are uint8 pixels.
        if not isinstance(images, np.ndarray):
            images = np.stack(
                [np.asarray(i.convert("RGB").convert(mode) if hasattr(i, "convert") else i) for i in images]
            )
        batch = torch.from_numpy(images)
        batch = (batch[:, None] if batch.dim() == 3 else batch.permute(0, 3, 1, 2)).float()
        size = (processor.size["height"], processor.size["width"])
        if processor.do_resize and tuple(batch.shape[-2:]) != size:
            # PIL widens its filter only when shrinking; when enlarging antialias gives the same numbers, slower.
            shrink = batch.shape[-2] > size[0] or batch.shape[-1] > size[1]
            batch = F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=shrink)
            batch = batch.round_().clamp_(0, 255)  # PIL resizes 8-bit images in 8 bits
        if processor.do_rescale:  # float64 product then float32, as transformers' `rescale`: bit-identical
            batch = (batch.double() * float(processor.rescale_factor)).float()
        if processor.do_normalize:
            mean = torch.tensor(processor.image_mean, dtype=torch.float32).view(-1, 1, 1)
            std = torch.tensor(processor.image_std, dtype=torch.float32).view(-1, 1, 1)
            batch = (batch - mean) / std
        return batch.contiguous()

    def augment_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Random crop with padding (default 4/28 of the height), horizontal flip and random erasing (area 2-33%,
        aspect 0.3-3.3) of a (B, C, H, W) batch."""
        batch, _, height, width = x.shape
        pad = self.crop_padding if self.crop_padding is not None else round(4 * height / 28)
        if pad > 0:
            processor = self.image_processor  # the padding is a black pixel in the output space
            black = -np.mean(processor.image_mean) / np.mean(processor.image_std) if processor.do_normalize else 0.0
            padded = F.pad(x, (pad, pad, pad, pad), value=float(black))
            offsets = torch.randint(0, 2 * pad + 1, (2, batch)).T.tolist()
            x = torch.stack([image[:, i : i + height, j : j + width] for image, (i, j) in zip(padded, offsets)])
        if self.flip_prob > 0:
            x = torch.where((torch.rand(batch) < self.flip_prob)[:, None, None, None], x.flip(-1), x)
        if self.erasing_prob > 0:
            erase = torch.rand(batch) < self.erasing_prob
            area = height * width * (0.02 + 0.31 * torch.rand(batch))
            ratio = (math.log(0.3) + (math.log(3.3) - math.log(0.3)) * torch.rand(batch)).exp()
            h = (area * ratio).sqrt().round().clamp(1, height).long()
            w = (area / ratio).sqrt().round().clamp(1, width).long()
            top = (torch.rand(batch) * (height - h + 1)).floor().long()[:, None, None]
            left = (torch.rand(batch) * (width - w + 1)).floor().long()[:, None, None]
            r, c = torch.arange(height)[None, :, None], torch.arange(width)[None, None, :]
            mask = (r >= top) & (r < top + h[:, None, None]) & (c >= left) & (c < left + w[:, None, None])
            x = x.masked_fill((mask & erase[:, None, None])[:, None], 0.0)
        return x.contiguous()


class PreloadedImageDataset(torch.utils.data.Dataset):
    """A split's images decoded once into one uint8 array, with a batch transform applied on access as
    ``set_transform`` would: the same batches without decoding every epoch."""

    def __init__(self, dataset: Dataset, transform, max_bytes: int = 4 * 2**30):
        first = np.asarray(dataset[0]["image"]) if len(dataset) else np.zeros(0)
        if len(dataset) * first.nbytes > max_bytes:
            raise ValueError(
                f"Preloading {len(dataset):,} images of shape {first.shape} needs more than {max_bytes / 2**30:g} "
                "GiB of memory. Train without --preload_images."
            )
        columns = dataset.with_format("numpy")[:]
        self.images, self.labels = columns["image"], columns["label"]
        if self.images.dtype == object:
            raise ValueError("Cannot preload images of different sizes or modes. Train without --preload_images.")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: list[int]) -> list[dict]:
        # The DataLoader fetches a whole batch with one call when the dataset has this method.
        batch = self.transform({"image": self.images[indices], "label": self.labels[indices]})
        return [{key: value[i] for key, value in batch.items()} for i in range(len(indices))]

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]


def main(argv: list[str] | None = None) -> int:
    """``python -m hf_vit_d2l.data check|stats``: the local files' md5s, or the training pixels' mean and std."""
    parser = argparse.ArgumentParser(prog="python -m hf_vit_d2l.data", description=main.__doc__)
    parser.add_argument("command", choices=["check", "stats"])
    parser.add_argument("--data_dir", default=DEFAULT_DATA_DIR)
    args = parser.parse_args(argv)
    files = find_fashion_mnist_files(args.data_dir)
    if files is None:
        parser.error(f"no Fashion-MNIST IDX files in {args.data_dir}. {how_to_get_data()}")
    if args.command == "check":
        result = {
            path.name: hashlib.md5(_read_bytes(path)).hexdigest() == IDX_MD5.get(path.name.removesuffix(".gz"))
            for pair in files.values()
            for path in pair
        }
        print(json.dumps(result, indent=1))
        return 0 if all(result.values()) else 1
    pixels = read_idx(files["train"][0]) / 255.0
    print(json.dumps({"mean": float(pixels.mean()), "std": float(pixels.std()), "images": len(pixels)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
