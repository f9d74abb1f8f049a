"""No secret leaves the machine through a push: symbolic links, pickles and Hub tokens never reach the upload.

Each test plants the secret in a fabricated training folder (`make_run_folder` of test_model_card.py), stages or
pushes it, and reads back every byte of what would be uploaded.
"""

import json
import os
import pickle
import secrets
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
from test_model_card import REPO_ROOT, make_run_folder

from hf_vit_d2l import hub
from hf_vit_d2l.hub import REDACTED, HubPushError, card_fields, known_tokens, redact_hub_token, stage_for_upload

# What a Trainer checkpoint and a careless user leave beside the model: none of it may be uploaded.
PICKLES = ("training_args.bin", "optimizer.pt", "rng_state.pth", "extra.pkl", "Notes.PICKLE")


def _fake_token() -> str:
    return "hf_" + secrets.token_hex(17)


@pytest.fixture
def no_login(tmp_path, monkeypatch):
    """No Hub token from the environment or a login on this machine, unless a test sets HF_TOKEN."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no_stored_tokens"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)


@pytest.fixture(scope="module")
def clean_folder(tmp_path_factory):
    return make_run_folder(tmp_path_factory.mktemp("secrets") / "run")


@pytest.fixture
def run_folder(clean_folder, tmp_path):
    """A fresh copy of the fabricated training folder, for a test to plant things in."""
    shutil.copytree(clean_folder, tmp_path / "run")
    return tmp_path / "run"


def _all_bytes(folder) -> dict[str, bytes]:
    """Every file under `folder` (subfolders included), read without following any link."""
    files = {}
    for root, dirs, names in os.walk(folder):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = os.path.join(root, name)
            assert not os.path.islink(path), f"staged folder holds a link: {path}"
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = f.read()
    return files


def _is_pickle(data: bytes) -> bool:
    """A pickle stream (protocol 2 and later start with PROTO) or torch.save's zip archive of one."""
    pickle_stream = data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    torch_archive = data[:4] == b"PK\x03\x04" and b".pkl" in data
    return pickle_stream or torch_archive


def _plant_pickles(folder) -> None:
    import torch

    torch.save({"hub_token": "unused", "seed": 42}, folder / "training_args.bin")
    for name in PICKLES[1:]:
        (folder / name).write_bytes(pickle.dumps({"learning_rate": 0.1}, protocol=4))


def _push_cli(folder, out, env_extra: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(out.parent / "hf_home"), PYTHONPATH=REPO_ROOT, **env_extra)
    script = os.path.join(REPO_ROOT, "scripts", "push_to_hub.py")
    command = [sys.executable, script, str(folder), "--repo_id", "u/m", "--dry_run", str(out)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------------------------------------------------------
# Symbolic links and pickles
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, target",
    [
        ("notes.txt", "outside_file"),  # an ~/.ssh/id_rsa-like file outside the folder
        ("passwd.txt", "/etc/passwd"),
        ("extras", "outside_dir"),  # a folder outside
        ("copy.safetensors", "model.safetensors"),  # a file inside: a link still, refused all the same
        ("dangling.json", "no_such_file"),
    ],
    ids=["file-outside", "etc-passwd", "folder-outside", "link-inside", "dangling"],
)
def test_staging_refuses_a_symbolic_link_and_names_it(run_folder, tmp_path, no_login, name, target):
    outside = tmp_path / "outside_file"
    outside.write_text("PRIVATE KEY outside the folder\n")
    (tmp_path / "outside_dir").mkdir()
    (tmp_path / "outside_dir" / "secret.txt").write_text("PRIVATE KEY in a folder outside\n")
    if target == "model.safetensors" or target.startswith("/"):
        os.symlink(target, run_folder / name)  # relative to the folder, or absolute
    else:
        os.symlink(tmp_path / target, run_folder / name)
    with pytest.raises(HubPushError, match=f"{run_folder / name} is a symbolic link") as info:
        stage_for_upload(run_folder, tmp_path / "upload")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "upload").exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".upload")], "a staging folder was left behind"


def test_push_cli_refuses_a_symbolic_link_with_one_line_and_exit_2(run_folder, tmp_path):
    (tmp_path / "id_rsa").write_text("PRIVATE KEY\n")
    os.symlink(tmp_path / "id_rsa", run_folder / "notes.txt")
    proc = _push_cli(run_folder, tmp_path / "upload", {})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {run_folder / 'notes.txt'} is a symbolic link"), proc.stderr
    assert not (tmp_path / "upload").exists()


def test_staged_folder_holds_only_the_folders_own_regular_files(run_folder, tmp_path, no_login):
    """The planted link is refused; without it, every staged byte is the folder's own and nothing is a pickle."""
    outside = tmp_path / "id_rsa"
    outside.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY----- " + secrets.token_bytes(64))
    os.symlink(outside, run_folder / "notes.txt")
    _plant_pickles(run_folder)
    (run_folder / ".env").write_bytes(outside.read_bytes())
    (run_folder / ".git").mkdir()
    (run_folder / ".git" / "config").write_bytes(outside.read_bytes())
    (run_folder / "checkpoint-8").mkdir()
    (run_folder / "checkpoint-8" / "optimizer.pt").write_bytes(pickle.dumps(outside.read_bytes()))
    with pytest.raises(HubPushError, match="notes.txt is a symbolic link"):
        stage_for_upload(run_folder, tmp_path / "upload")
    os.remove(run_folder / "notes.txt")

    staged = _all_bytes(stage_for_upload(run_folder, tmp_path / "upload", repo_id="u/m"))
    secret = outside.read_bytes()
    for name, data in staged.items():
        assert secret not in data, f"{name} holds bytes of a file outside the folder"
        assert not _is_pickle(data), f"{name} is a pickle"
        if name != "README.md":
            assert data == (run_folder / name).read_bytes(), f"{name} is not the folder's own file"
    expected = {n for n in os.listdir(run_folder) if (run_folder / n).is_file() and not n.startswith(".")}
    assert set(staged) == (expected - set(PICKLES)) | {"README.md"}
    for name in PICKLES:
        assert name not in staged, f"{name} (a pickle) was staged"


def test_pickled_weights_alone_are_refused_not_uploaded_without_weights(run_folder, tmp_path, no_login):
    (run_folder / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": 0}))
    os.remove(run_folder / "model.safetensors")
    with pytest.raises(HubPushError, match="no model\\*.safetensors weights"):
        stage_for_upload(run_folder, tmp_path / "upload")
    assert not (tmp_path / "upload").exists()


# ---------------------------------------------------------------------------------------------------------------
# Hub tokens
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        "python scripts/train.py --hub_token {token} --push_to_hub",
        "python scripts/train.py --hub_token={token} --push_to_hub",
        "python scripts/train.py --hub-token {token}",
        "python scripts/train.py --hub_tok {token}",  # argparse accepts an unambiguous prefix
        "python scripts/train.py --hub_token '{token}' --seed 1",
        "python scripts/train.py --hub_token {token} --hub_token={token}",
    ],
)
def test_redact_hub_token(command):
    token = _fake_token()
    redacted = redact_hub_token(command.format(token=token))
    assert token not in redacted
    assert REDACTED in redacted
    assert redacted.startswith("python scripts/train.py --hub")
    assert redact_hub_token("python scripts/train.py --hub_model_id u/m --seed 1") == (
        "python scripts/train.py --hub_model_id u/m --seed 1"
    )


@pytest.mark.parametrize("mask", ["<HUB_TOKEN>", REDACTED, "***", "REDACTED", "hf_x", ""])
def test_masks_are_not_tokens(run_folder, no_login, mask):
    """What transformers and a redacting recorder write in place of a token is no token to look for."""
    info = json.loads((run_folder / "run_info.json").read_text())
    info["command"] = f"python scripts/train.py --hub_token {mask} --seed 1"
    info["training_args"]["hub_token"] = mask
    (run_folder / "run_info.json").write_text(json.dumps(info))
    assert known_tokens(str(run_folder)) == set()
    token = _fake_token()
    info["training_args"]["hub_token"] = token
    (run_folder / "run_info.json").write_text(json.dumps(info))
    assert known_tokens(str(run_folder)) == {token}


def _record_token(folder, token: str) -> None:
    """run_info.json as an old run wrote it: the token in the recorded command and in the training arguments."""
    info = json.loads((folder / "run_info.json").read_text())
    info["command"] = f"python scripts/train.py --recipe book --hub_token {token} --push_to_hub"
    info["training_args"]["hub_token"] = token
    (folder / "run_info.json").write_text(json.dumps(info))


def test_card_redacts_a_recorded_token_and_staging_refuses_the_file(run_folder, tmp_path, no_login):
    token = _fake_token()
    _record_token(run_folder, token)
    fields = card_fields(run_folder)
    assert fields["command"] == f"python scripts/train.py --recipe book --hub_token {REDACTED} --push_to_hub"
    assert token not in str(hub.build_model_card(run_folder))
    with pytest.raises(HubPushError, match="run_info.json holds a Hugging Face token") as info:
        stage_for_upload(run_folder, tmp_path / "upload")
    assert token not in str(info.value)
    assert not (tmp_path / "upload").exists()

    info = json.loads((run_folder / "run_info.json").read_text())
    info["command"] = redact_hub_token(info["command"])
    info["training_args"]["hub_token"] = None
    (run_folder / "run_info.json").write_text(json.dumps(info))
    staged = _all_bytes(stage_for_upload(run_folder, tmp_path / "upload"))
    for name, data in staged.items():
        assert token.encode() not in data, f"{name} holds the token"


@pytest.mark.parametrize("where", ["notes.txt", "trainer_state.json"])
def test_staging_refuses_a_file_holding_the_token_in_use(run_folder, tmp_path, no_login, monkeypatch, where):
    token = _fake_token()
    monkeypatch.setenv("HF_TOKEN", token)
    # Across the 1 MiB boundary of the reads, so that only the overlap of two reads finds it.
    data = b"x" * ((1 << 20) - 5) + token.encode() + b"\n"
    if where == "trainer_state.json":
        state = json.loads((run_folder / where).read_text())
        state["note"] = "x" * ((1 << 20) - 20) + token
        data = json.dumps(state).encode()
    (run_folder / where).write_bytes(data)
    with pytest.raises(HubPushError, match=f"{run_folder / where} holds a Hugging Face token") as info:
        stage_for_upload(run_folder, tmp_path / "upload")
    assert token not in str(info.value)
    assert not (tmp_path / "upload").exists()


def test_push_cli_dry_run_refuses_the_token_with_one_line(run_folder, tmp_path):
    token = _fake_token()
    (run_folder / "notes.txt").write_text(f"my token: {token}\n")
    proc = _push_cli(run_folder, tmp_path / "upload", {"HF_TOKEN": token})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "notes.txt holds a Hugging Face token" in proc.stderr
    assert token not in proc.stderr + proc.stdout
    assert not (tmp_path / "upload").exists()


def test_upload_sends_no_token_link_or_pickle(run_folder, tmp_path, no_login, monkeypatch):
    """Every byte the real push hands to the Hub API (a recording stand-in for HfApi), for a folder with planted
    pickles and a token-free run_info.json; with a recorded token or a link, nothing is sent at all."""
    import huggingface_hub

    token = _fake_token()
    monkeypatch.setenv("HF_TOKEN", token)
    _plant_pickles(run_folder)
    sent: dict[str, bytes] = {}
    calls = []

    class RecordingApi:
        def __init__(self, token):
            calls.append("init")

        def create_repo(self, repo_id, private, exist_ok):
            calls.append("create_repo")
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls.append("upload_folder")
            sent.update(_all_bytes(folder_path))
            return SimpleNamespace(oid="0" * 40)

        def upload_file(self, path_or_fileobj, path_in_repo, repo_id, commit_message):
            calls.append("upload_file")
            sent[f"second commit: {path_in_repo}"] = path_or_fileobj

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    monkeypatch.setattr(hub, "check_hub_ready", lambda: token)
    hub.push_to_hub(run_folder, "u/m")
    assert "README.md" in sent
    assert "model.safetensors" in sent
    for name, data in sent.items():
        assert token.encode() not in data, f"{name} holds the token"
        assert not _is_pickle(data), f"{name} is a pickle"

    calls.clear()
    _record_token(run_folder, _fake_token())
    with pytest.raises(HubPushError, match="run_info.json holds a Hugging Face token"):
        hub.push_to_hub(run_folder, "u/m")
    assert calls == [], "the Hub API was called"
    os.symlink("/etc/passwd", run_folder / "passwd.txt")
    with pytest.raises(HubPushError, match="passwd.txt is a symbolic link"):
        hub.push_to_hub(run_folder, "u/m")
    assert calls == [], "the Hub API was called"


DATA_DIR = "/usr/share/datasets/fashion-mnist"
TINY = "image_size=28,patch_size=7,hidden_size=32,intermediate_size=64,num_attention_heads=2,num_hidden_layers=1"


@pytest.mark.skipif(not os.path.isdir(DATA_DIR), reason="needs Debian's dataset-fashion-mnist")
def test_train_push_to_hub_writes_and_uploads_no_token(tmp_path, no_login, monkeypatch):
    """`train.py --hub_token T --push_to_hub`: T is in no byte of the output folder (checkpoints included) and in no
    byte the push hands to the Hub API (a recording stand-in for HfApi); nothing pickled is uploaded."""
    import huggingface_hub

    from hf_vit_d2l import training

    token = _fake_token()
    sent: dict[str, bytes] = {}

    class RecordingApi:
        def __init__(self, token=None):
            pass

        def whoami(self, token=None):
            return {"name": "someone"}

        def create_repo(self, repo_id, private, exist_ok):
            sent["repo_id"] = repo_id.encode()
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, repo_id, folder_path, commit_message):
            sent.update(_all_bytes(folder_path))
            return SimpleNamespace(oid="0" * 40)

        def upload_file(self, path_or_fileobj, path_in_repo, repo_id, commit_message):
            sent[f"second commit: {path_in_repo}"] = path_or_fileobj

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    monkeypatch.setenv("HF_TOKEN", "restored-after-the-test")  # training moves the token into HF_TOKEN
    monkeypatch.setattr(training, "hub_available", lambda: True)
    monkeypatch.setattr(hub, "check_hub_ready", lambda: token)
    out = tmp_path / "run"
    argv = ["--recipe", "quick", "--config_overrides", TINY, "--data_dir", DATA_DIR, "--max_train_samples", "128"]
    argv += ["--max_eval_samples", "64", "--num_train_epochs", "1", "--disable_tqdm", "true"]
    argv += ["--output_dir", str(out), "--push_to_hub", "--hub_token", token, "--hub_model_id", "vit-d2l-secret"]
    monkeypatch.setattr(sys, "argv", ["scripts/train.py", *argv])
    training.main(argv)
    assert sent["repo_id"] == b"someone/vit-d2l-secret", "the user's namespace"
    assert "model.safetensors" in sent, "the weights were uploaded"
    for name, data in {**_all_bytes(out), **sent}.items():
        assert token.encode() not in data, f"{name} holds the token"
    for name, data in sent.items():
        assert not _is_pickle(data), f"{name} is an uploaded pickle"
    info = json.loads((out / "run_info.json").read_text())
    assert "--hub_token <redacted>" in info["command"], info["command"]
