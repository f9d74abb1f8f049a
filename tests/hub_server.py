"""A local Hugging Face Hub for tests: olah, a self-hosted Hub mirror, serving git repositories over the Hub's API.

`LocalHub(folder, olah_cli).start()` writes an olah config (offline, 127.0.0.1, a free port), starts `olah-cli`
with its logs in `folder/logs` and returns once the server answers; `stop()` ends it by its PID. Clients reach it
through `HF_ENDPOINT=hub.url`. Repositories are ordinary git repositories in the Hub's layout under `hub.mirrors`:
`datasets/ORG/NAME` and `models/ORG/NAME`. `commit(...)` commits what lies in one and returns the commit's sha;
`MirrorUploadApi` stands in for `HfApi`'s uploads, committing into the mirror.

olah runs from a venv of its own (its pins clash with this project's), found at `$OLAH_CLI`, then
`.venv-olah/bin/olah-cli` in the checkout, then on PATH. `scripts/setup.sh` creates that venv with
:data:`INSTALL_COMMAND`.

What olah 0.5.4 does differently from the real Hub, offline: `/api/models/ORG/NAME` without a revision and
`HEAD /ORG/NAME/resolve/main/FILE` of a model answer 401 (clients that pass `revision=` resolve by sha and work);
`list_repo_commits` fails; there are no upload routes (`create_repo` 405, `preupload` 404).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
OLAH_VERSION = "0.5.4"
INSTALL_COMMAND = f'python3 -m venv .venv-olah && .venv-olah/bin/python -m pip install "olah=={OLAH_VERSION}"'
FASHION_MNIST_REPO = "zalando-datasets/fashion_mnist"
GIT_IDENTITY = ["-c", "user.name=Local Hub", "-c", "user.email=local-hub@localhost"]


def find_olah_cli() -> str | None:
    """The `olah-cli` executable: `$OLAH_CLI`, the checkout's `.venv-olah`, or PATH; None when there is none."""
    candidates = [os.environ.get("OLAH_CLI"), str(REPO / ".venv-olah" / "bin" / "olah-cli"), shutil.which("olah-cli")]
    return next((path for path in candidates if path and os.access(path, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *GIT_IDENTITY, *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


class LocalHub:
    """An olah server over the git repositories in `folder/mirrors`."""

    def __init__(self, folder: Path, olah_cli: str):
        self.folder = Path(folder)
        self.mirrors = self.folder / "mirrors"
        self.logs = self.folder / "logs"
        self.olah_cli = olah_cli
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self, probe_repo: str = f"datasets/{FASHION_MNIST_REPO}") -> str:
        """Start olah on a free port, wait until `GET /api/{probe_repo}/revision/main` answers 200; return the URL.

        The probe repository must exist in `mirrors` already. A port taken between choosing and binding it makes
        olah exit; the next try takes another port.
        """
        self.mirrors.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._launch(free_port(), f"/api/{probe_repo}/revision/main"):
                return self.url
        raise RuntimeError(f"olah did not start; its output:\n{self.output()[-3000:]}")

    def _launch(self, port: int, probe: str, timeout: float = 60.0) -> bool:
        config = self.folder / "olah.toml"
        config.write_text(
            "[basic]\n"
            'host = "127.0.0.1"\n'
            f"port = {port}\n"
            f'repos-path = "{self.folder / "cache"}"\n'
            'mirror-scheme = "http"\n'
            f'mirror-netloc = "127.0.0.1:{port}"\n'
            f'mirror-lfs-netloc = "127.0.0.1:{port}"\n'
            f'mirrors-path = ["{self.mirrors}"]\n'
            "metadata-cache-ttl = 0\n"  # a new commit on main is seen at once
            "\n[accessibility]\noffline = true\n"
        )
        with open(self.logs / "olah-cli.out", "ab") as out:
            self.process = subprocess.Popen(
                [self.olah_cli, "-c", str(config), "--log-path", str(self.logs)],
                cwd=self.folder,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(self.url + probe, timeout=2) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        return False

    def stop(self) -> None:
        """End the server by its PID: SIGTERM, then SIGKILL after 10 s."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def output(self) -> str:
        """Everything olah wrote: its console output and `olah.log` (one line per request)."""
        parts = [self.logs / "olah-cli.out", self.logs / "olah.log"]
        return "\n".join(path.read_text(errors="replace") for path in parts if path.exists())

    def requests(self) -> list[str]:
        """The request lines olah logged so far, oldest first (`"GET /path HTTP/1.1" 200`): clients' HTTP calls."""
        log = self.logs / "olah.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        return [line for line in lines if '"GET /' in line or '"HEAD /' in line]

    def repo_path(self, repo_type: str, repo_id: str) -> Path:
        return self.mirrors / f"{repo_type}s" / repo_id

    def commit(self, repo_type: str, repo_id: str, message: str) -> str:
        """Commit every file in the repository's folder on `main` (creating the git repository if needed)."""
        path = self.repo_path(repo_type, repo_id)
        if not (path / ".git").exists():
            git(path, "init", "--quiet", "--initial-branch", "main")
        git(path, "add", "--all")
        git(path, "commit", "--quiet", "--allow-empty", "--message", message)
        return git(path, "rev-parse", "HEAD")


class MirrorUploadApi:
    """The upload side of `huggingface_hub.HfApi` (`create_repo`, `upload_folder`, `upload_file`) for a `LocalHub`,
    which has no upload routes: each upload becomes a git commit in the mirror, served at once over HTTP.

    Use it where code calls `HfApi(token=...)`: `monkeypatch.setattr(huggingface_hub, "HfApi",
    functools.partial(MirrorUploadApi, hub))`. Models only (`repo_type` None or "model").
    """

    def __init__(self, hub: LocalHub, token: str | None = None):
        self.hub = hub
        self.token = token

    def _path(self, repo_id: str, repo_type: str | None) -> Path:
        if repo_type not in (None, "model"):
            raise NotImplementedError(f"MirrorUploadApi uploads models only, not {repo_type!r} repositories.")
        return self.hub.repo_path("model", repo_id)

    def create_repo(self, repo_id: str, private: bool = False, exist_ok: bool = False, repo_type=None) -> str:
        path = self._path(repo_id, repo_type)
        if path.exists() and not exist_ok:
            raise FileExistsError(f"{repo_id} exists")
        path.mkdir(parents=True, exist_ok=True)
        return f"{self.hub.url}/{repo_id}"

    def upload_folder(self, repo_id: str, folder_path, commit_message: str, repo_type=None) -> SimpleNamespace:
        """Copy the folder's files over the repository's (others stay, as on the Hub) and commit them."""
        path = self._path(repo_id, repo_type)
        shutil.copytree(folder_path, path, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git"))
        sha = self.hub.commit("model", repo_id, commit_message)
        return SimpleNamespace(oid=sha, commit_url=f"{self.hub.url}/{repo_id}/commit/{sha}")

    def upload_file(
        self, path_or_fileobj, path_in_repo: str, repo_id: str, commit_message: str, repo_type=None
    ) -> SimpleNamespace:
        target = self._path(repo_id, repo_type) / path_in_repo
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(path_or_fileobj, bytes):
            target.write_bytes(path_or_fileobj)
        else:
            shutil.copyfile(path_or_fileobj, target)
        sha = self.hub.commit("model", repo_id, commit_message)
        return SimpleNamespace(oid=sha, commit_url=f"{self.hub.url}/{repo_id}/commit/{sha}")


def write_fashion_mnist_repo(
    hub: LocalHub, arrays: dict, sizes: dict[str, int], repo_id: str = FASHION_MNIST_REPO
) -> str:
    """`zalando-datasets/fashion_mnist` as on the Hub, with the first `sizes[split]` real images of each split,
    committed on `main` of `repo_id`.

    The Hub's layout: `fashion_mnist/{split}-00000-of-00001.parquet` and a README whose YAML has `dataset_info`
    (features, ClassLabel names, split sizes) and `configs` (the data files of each split). Returns the commit's sha.
    """
    from datasets import Dataset
    from PIL import Image

    from hf_vit_d2l.data import fashion_mnist_features

    features = fashion_mnist_features()
    repo = hub.repo_path("dataset", repo_id)
    (repo / "fashion_mnist").mkdir(parents=True, exist_ok=True)
    splits = []
    download_size = 0
    for split, count in sizes.items():
        images, labels = arrays[split]
        dataset = Dataset.from_dict(
            {
                "image": [Image.fromarray(np.asarray(a), mode="L") for a in images[:count]],
                "label": labels[:count].tolist(),
            },
            features=features,
        )
        path = repo / "fashion_mnist" / f"{split}-00000-of-00001.parquet"
        dataset.to_parquet(path)
        download_size += path.stat().st_size
        splits.append({"name": split, "num_bytes": dataset.data.nbytes, "num_examples": count})
    names = features["label"].names
    card = {
        "license": "mit",
        "task_categories": ["image-classification"],
        "pretty_name": "FashionMNIST",
        "dataset_info": {
            "config_name": "fashion_mnist",
            "features": [
                {"name": "image", "dtype": "image"},
                {"name": "label", "dtype": {"class_label": {"names": {str(i): name for i, name in enumerate(names)}}}},
            ],
            "splits": splits,
            "download_size": download_size,
            "dataset_size": sum(split["num_bytes"] for split in splits),
        },
        "configs": [
            {
                "config_name": "fashion_mnist",
                "data_files": [{"split": split, "path": f"fashion_mnist/{split}-*"} for split in sizes],
                "default": True,
            }
        ],
    }
    readme = f"---\n{yaml.safe_dump(card, sort_keys=False)}---\n\n# Fashion-MNIST\n\nA slice of the real files.\n"
    (repo / "README.md").write_text(readme)
    return hub.commit("dataset", repo_id, f"Fashion-MNIST in parquet: {sizes}")
