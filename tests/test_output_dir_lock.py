"""One run per --output_dir: a second run stops at once naming the first's PID, every rank of it exits, a crashed
run leaves no stale lock, and a failed run leaves the last good run's record alone."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import Trainer

from hf_vit_d2l import training

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_data = pytest.mark.skipif(
    not (DATA_DIR / "train-images-idx3-ubyte.gz").exists(), reason="needs Debian's dataset-fashion-mnist"
)
TINY = "image_size=28,patch_size=7,hidden_size=32,intermediate_size=64,num_attention_heads=2,num_hidden_layers=1"
# A process that holds the output folder's lock the way a running train.py does, until it is killed.
HOLDER = """
import sys, time
from transformers import TrainingArguments
from hf_vit_d2l.training import output_dir_lock
with output_dir_lock(TrainingArguments(output_dir=sys.argv[1], use_cpu=True, report_to="none")):
    print("locked", flush=True)
    time.sleep(600)
"""


def tiny_run(output_dir: Path, *extra: str) -> list[str]:
    common = ["--recipe", "quick", "--config_overrides", TINY, "--data_dir", str(DATA_DIR), "--disable_tqdm", "true"]
    slice_ = ["--max_train_samples", "128", "--max_eval_samples", "64", "--num_train_epochs", "1"]
    return [*common, *slice_, "--output_dir", str(output_dir), *extra]


def env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))


@pytest.fixture
def holder(tmp_path):
    """A process holding the lock of tmp_path/out; killed (SIGKILL, as a crash) at the end if still alive."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "out")], stdout=subprocess.PIPE, text=True, env=env()
    )
    assert process.stdout.readline().strip() == "locked", "the holder took the lock"
    yield process
    process.kill()
    process.wait()


def test_a_second_run_stops_at_once_naming_the_first_runs_pid(tmp_path, holder, capsys):
    start = time.perf_counter()
    status = training.run(["--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2, err
    assert f"in use by another training run (PID {holder.pid})" in err, err
    assert err.count("error:") == 1, err
    assert time.perf_counter() - start < 30, "refused before the data and the model were built"


def test_a_crashed_run_leaves_no_stale_lock(tmp_path, holder, capsys):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with training.output_dir_lock(training.TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True)):
        lock_file = tmp_path / "out" / training.LOCK_FILE
        assert lock_file.read_text() == str(os.getpid()), "the new run records its own PID"


def test_an_unwritable_output_folder_gets_one_line(tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")  # root writes into read-only folders, but not under a file
    status = training.run(["--output_dir", str(tmp_path / "a-file" / "out")])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "cannot write there" in err, err


@needs_data
def test_every_rank_of_a_refused_two_process_run_exits(tmp_path, holder):
    config = REPO / "configs" / "accelerate_cpu_ddp.yaml"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    launch += ["--num_processes", "2", "--main_process_port", "0", str(REPO / "scripts" / "train.py")]
    result = subprocess.run(
        [*launch, *tiny_run(tmp_path / "out")], capture_output=True, text=True, timeout=240, env=env()
    )
    assert result.returncode != 0, result.stdout[-2000:]
    assert f"PID {holder.pid}" in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2, f"one error line per rank: {result.stderr[-3000:]}"


@needs_data
def test_a_failed_run_keeps_the_last_good_runs_record(tmp_path, monkeypatch):
    out = tmp_path / "out"
    training.main(tiny_run(out))
    record = (out / "run_info.json").read_text()
    assert json.loads(record)["eval_accuracy"] is not None, "the good run's record"

    def fail(self, *args, **kwargs):
        raise RuntimeError("No space left on device")

    monkeypatch.setattr(Trainer, "train", fail)
    with pytest.raises(RuntimeError, match="No space left"):
        training.main(tiny_run(out, "--overwrite_output_dir", "true", "--seed", "7"))
    assert (out / "run_info.json").read_text() == record, "the failed run replaced the record"


def test_zero_epochs_are_refused(tmp_path, capsys):
    status = training.run(["--output_dir", str(tmp_path / "out"), "--num_train_epochs", "0"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "--num_train_epochs 0" in err, err
    assert not (tmp_path / "out").exists(), "refused before the output folder was made"
