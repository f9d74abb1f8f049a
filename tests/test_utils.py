"""Crash-safe saving, the Hub check and CPU feature detection (`hf_vit_d2l.utils`)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hf_vit_d2l import utils

REPO = Path(__file__).resolve().parents[1]


def _write(files: dict[str, bytes]):
    def write(folder):
        for name, content in files.items():
            Path(folder, name).write_bytes(content)

    return write


def test_save_moves_everything_in_and_removes_stale_shards(tmp_path):
    target = tmp_path / "model"
    utils.save_folder_atomically(target, _write({"model-00001-of-00002.safetensors": b"a", "config.json": b"{}"}))
    (target / "notes.txt").write_text("mine")
    utils.save_folder_atomically(target, _write({"model.safetensors": b"new", "config.json": b'{"v": 2}'}))
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors", "notes.txt"]
    assert (target / "config.json").read_text() == '{"v": 2}'
    assert not list(tmp_path.glob(".model.staging-*"))


def test_a_failed_save_leaves_the_previous_folder_and_no_staging(tmp_path):
    target = tmp_path / "model"
    utils.save_folder_atomically(target, _write({"model.safetensors": b"old", "config.json": b"{}"}))

    def broken(folder):
        Path(folder, "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        utils.save_folder_atomically(target, broken)
    assert (target / "model.safetensors").read_bytes() == b"old"
    assert not list(tmp_path.glob(".model.staging-*"))
    with pytest.raises(ValueError, match="is a file"):
        utils.save_folder_atomically(target / "config.json", broken)


_KILLED_SAVE = """
import sys, time
from pathlib import Path
from hf_vit_d2l.utils import save_folder_atomically

def slow(folder):
    Path(folder, "model.safetensors").write_bytes(b"x" * 1_000_000)
    print("writing", flush=True)
    time.sleep(60)

save_folder_atomically(sys.argv[1], slow)
"""


def test_a_save_killed_with_sigkill_is_cleaned_up_by_the_next_save(tmp_path):
    target = tmp_path / "model"
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_SAVE, str(target)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert process.stdout.readline().strip() == "writing"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    staging = list(tmp_path.glob(".model.staging-*"))
    assert len(staging) == 1
    assert not target.exists()  # nothing that looks like a saved model
    utils.save_folder_atomically(target, _write({"model.safetensors": b"ok", "config.json": b"{}"}))
    assert not list(tmp_path.glob(".model.staging-*"))
    assert (target / "model.safetensors").read_bytes() == b"ok"


def test_write_json_atomic(tmp_path):
    path = tmp_path / "sub" / "run_info.json"
    utils.write_json_atomic(path, {"a": 1})
    utils.write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert os.listdir(path.parent) == ["run_info.json"]


def test_hub_available_is_bounded_and_honours_offline_mode(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert utils.hub_available() is False
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.perf_counter()
    assert utils.hub_available(timeout=1.0) is False
    assert time.perf_counter() - start < 2


def test_cpu_features_match_what_the_kernel_and_torch_report(monkeypatch):
    flags = utils._cpu_flags()
    isa = utils.cpu_isa()
    if flags:
        assert isa in ("AMX", "AVX-512", "AVX2"), (isa, sorted(flags))
        assert utils.cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})
        assert (isa == "AMX") == ("amx_bf16" in flags)
    monkeypatch.setattr(utils, "_cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert utils.cpu_isa() == "AVX2"
    assert utils.cpu_has_native_bf16() is False
    assert 1 <= utils.cpu_count() <= (os.cpu_count() or 1)
