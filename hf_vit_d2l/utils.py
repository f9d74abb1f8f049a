"""Small helpers shared by training, evaluation and publishing: crash-safe writes, Hub availability, CPU features."""

import glob
import json
import os
import platform
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import torch

STAGING_MARK = ".staging-"


def _fsync_tree(path: str) -> None:
    """Flush a folder's files to disk before they move into place, so that a power loss cannot truncate them."""
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())


def save_folder_atomically(
    output_dir: str | os.PathLike, write: Callable[[str], None], last: str = "config.json"
) -> str:
    """Run `write(staging_dir)` and move what it wrote into `output_dir` by `os.replace`, `last` (the file that marks
    done) last: an interrupted save leaves no truncated file. Stale weight shards and killed saves' staging go."""
    output_dir = os.path.abspath(os.fspath(output_dir))
    if os.path.isfile(output_dir):
        raise ValueError(f"Cannot save into {output_dir}: it is a file, and a model is saved as a folder.")
    parent, name = os.path.split(output_dir)
    os.makedirs(parent, exist_ok=True)
    for stale in glob.glob(os.path.join(parent, glob.escape(f".{name}{STAGING_MARK}") + "*")):
        shutil.rmtree(stale, ignore_errors=True)
    staging = tempfile.mkdtemp(prefix=f".{name}{STAGING_MARK}", dir=parent)
    try:
        write(staging)
        _fsync_tree(staging)
        os.makedirs(output_dir, exist_ok=True)
        new = set(os.listdir(staging))
        for old in set(os.listdir(output_dir)) - new:
            if old.startswith("model") and old.endswith((".safetensors", ".safetensors.index.json")):
                os.remove(os.path.join(output_dir, old))  # a stale shard of an earlier save
        for entry in sorted(new, key=lambda n: n == last):
            target = os.path.join(output_dir, entry)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            os.replace(os.path.join(staging, entry), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON through a temporary file and `os.replace`."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{os.path.basename(path)}{STAGING_MARK}", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.remove(staging)


def check_writable_folder(folder: str | os.PathLike, flag: str) -> None:
    """Create `folder` if needed and write a test file in it, before any work: a `ValueError` naming `flag` if not."""
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"{flag} {folder}: it is a file, not a folder. Choose a folder to write into.")
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(
            f"{flag} {folder}: cannot write there ({err.strerror or err}). Choose a folder you can write to."
        ) from None


def unsafe_pickle_message(path: str) -> str:
    """The refusal of a pickle that torch's `weights_only` loader rejected; unlike torch's, it does not advise loading
    it anyway."""
    return (
        f"{path} is refused as unsafe: it is a pickle holding more than tensors (loading it could run code), or it is "
        "damaged. Ask its author for model.safetensors, or convert it to safetensors only if you trust its source."
    )


def hub_available(timeout: float = 3.0) -> bool:
    """Whether the Hub can be used now: not `HF_HUB_OFFLINE`, and its endpoint accepts a TCP connection within
    `timeout` (where `load_dataset` would wait much longer on a dead network before failing)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return {flag for line in f if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:
        return set()


def cpu_isa() -> str:
    """The CPU's vector ISA level as a short name: "AMX", "AVX-512", "AVX2", or what torch reports (e.g. on ARM)."""
    if "amx_bf16" in _cpu_flags():
        return "AMX"
    capability = torch.backends.cpu.get_cpu_capability()  # "AVX512", "AVX2", "DEFAULT", "SVE256", ...
    return {"AVX512": "AVX-512"}.get(capability, capability if capability != "DEFAULT" else platform.machine())


def _matmul_seconds(dtype: torch.dtype, size: int = 256, repeats: int = 3) -> float:
    a = torch.ones(size, size, dtype=dtype)
    torch.mm(a, a)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, a)
    return time.perf_counter() - start


def cpu_has_native_bf16() -> bool:
    """Whether bf16 matrix products run natively on this CPU, not through a far slower fallback: on x86 Linux the
    flags oneDNN's bf16 kernels need; elsewhere (ARM, macOS) whether a small bf16 matmul is about as fast as fp32."""
    flags = _cpu_flags()
    if flags and platform.machine() in ("x86_64", "AMD64", "i686"):
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    return _matmul_seconds(torch.bfloat16) < 2 * _matmul_seconds(torch.float32)


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one): the threads torch should use in total."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
