"""Shared pytest fixtures: real Fashion-MNIST files and small real-data datasets in the Hub's schema.

* ``fashion_mnist_dir``: the folder with the four Debian IDX files (skips, saying how to install them, if absent).
* ``fashion_mnist_arrays``: the real train/test images (uint8 N x 28 x 28) and labels read from those files.
* ``tiny_idx_dir``: a folder of four valid IDX ``.gz`` files holding the first 600 train / 200 test real images.
* ``tiny_parquet_dataset``: ``{"train": path, "test": path, "dir": folder}``, 600/200 real images written with
  ``Dataset.to_parquet`` in the Hub's schema (``image: Image()``, ``label: ClassLabel``), for
  ``load_dataset("parquet", data_files=...)`` or ``load_dataset(folder)``.
* ``local_hub``: a running local Hub (olah, ``tests/hub_server.py``) holding ``zalando-datasets/fashion_mnist`` in
  the Hub's layout, 512/256 real images; its ``.url`` is the ``HF_ENDPOINT``. Skips when olah is not installed,
  fails instead with HF_VIT_D2L_REQUIRE_HUB_SERVER=1 (set in CI).
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import hub_server
import numpy as np
import pytest

TINY_TRAIN = 600
TINY_TEST = 200
HUB_SIZES = {"train": 512, "test": 256}


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """Write a uint8 array as an IDX file (gzip-compressed if ``compress``)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(data, compresslevel=1) if compress else data)
    return path


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    from hf_vit_d2l.data import DEFAULT_DATA_DIR, find_fashion_mnist_files

    if find_fashion_mnist_files(DEFAULT_DATA_DIR) is None:
        pytest.skip(
            f"Fashion-MNIST IDX files not found in {DEFAULT_DATA_DIR}; install them with "
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu; .ci/run does this)."
        )
    return Path(DEFAULT_DATA_DIR)


@pytest.fixture(scope="session")
def fashion_mnist_arrays(fashion_mnist_dir) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from hf_vit_d2l.data import find_fashion_mnist_files, read_idx

    files = find_fashion_mnist_files(fashion_mnist_dir)
    return {split: (read_idx(images), read_idx(labels)) for split, (images, labels) in files.items()}


@pytest.fixture(scope="session")
def tiny_idx_dir(fashion_mnist_arrays, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_idx")
    sizes = {"train": TINY_TRAIN, "test": TINY_TEST}
    prefixes = {"train": "train", "test": "t10k"}
    for split, (images, labels) in fashion_mnist_arrays.items():
        n = sizes[split]
        write_idx(folder / f"{prefixes[split]}-images-idx3-ubyte.gz", images[:n])
        write_idx(folder / f"{prefixes[split]}-labels-idx1-ubyte.gz", labels[:n])
    return folder


@pytest.fixture(scope="session")
def tiny_parquet_dataset(fashion_mnist_arrays, tmp_path_factory) -> dict[str, str]:
    from datasets import Dataset
    from PIL import Image

    from hf_vit_d2l.data import fashion_mnist_features

    folder = tmp_path_factory.mktemp("tiny_parquet")
    paths = {"dir": str(folder)}
    for split, n in (("train", TINY_TRAIN), ("test", TINY_TEST)):
        images, labels = fashion_mnist_arrays[split]
        dataset = Dataset.from_dict(
            {"image": [Image.fromarray(a, mode="L") for a in images[:n]], "label": labels[:n].tolist()},
            features=fashion_mnist_features(),
        )
        paths[split] = str(folder / f"{split}.parquet")
        dataset.to_parquet(paths[split])
    return paths


@pytest.fixture(scope="session")
def local_hub(fashion_mnist_arrays, tmp_path_factory):
    olah_cli = hub_server.find_olah_cli()
    if olah_cli is None:
        message = f"needs olah, the local Hub server: run `{hub_server.INSTALL_COMMAND}` (scripts/setup.sh does)"
        if os.environ.get("HF_VIT_D2L_REQUIRE_HUB_SERVER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    hub = hub_server.LocalHub(tmp_path_factory.mktemp("local_hub"), olah_cli)
    hub_server.write_fashion_mnist_repo(hub, fashion_mnist_arrays, HUB_SIZES)
    hub.start()
    yield hub
    hub.stop()
