"""The Hub paths over real HTTP, against a local Hub server (olah, `tests/hub_server.py`, the `local_hub` fixture).

The server holds `zalando-datasets/fashion_mnist` in the Hub's own layout (parquet per split, README with
`configs` and `dataset_info`), built from a slice of the real IDX files. Clients reach it by `HF_ENDPOINT` only,
in subprocesses with a fresh `HF_HOME`, so every file they read came over HTTP.

The push round trip: a tiny run trained on that dataset is pushed through the upload fake (`MirrorUploadApi`: each
commit a real git commit in the mirror), then main moves on to other weights. Every client loads the repo by id at
the pinned sha and must give the local folder's probabilities within 1e-6, with the server's log showing the
weights sent at that sha only: transformers and `pipeline` where the package cannot be imported, the Space's
app.py, and the package's predict, evaluation, demo (through gradio_client) and fine-tuning commands.
"""

import functools
import json
import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import numpy as np
import pytest
import torch
from conftest import HUB_SIZES
from hub_server import FASHION_MNIST_REPO, MirrorUploadApi, free_port, write_fashion_mnist_repo
from huggingface_hub import HfApi
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor, AutoModelForImageClassification

from hf_vit_d2l import FASHION_MNIST_LABELS, hub

REPO = Path(__file__).resolve().parents[1]
TINY = "image_size=28,patch_size=7,hidden_size=32,intermediate_size=64,num_attention_heads=2,num_hidden_layers=1"


def hub_env(hub, tmp_path) -> dict[str, str]:
    """The environment of a client of `hub`: online, HF_ENDPOINT at the server, nothing cached."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH=str(REPO))
    env.update(TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    return env


def test_fashion_mnist_repo_has_the_hubs_layout_and_card(local_hub):
    api = HfApi(endpoint=local_hub.url)
    info = api.dataset_info(FASHION_MNIST_REPO, revision="main")
    files = {sibling.rfilename for sibling in info.siblings}
    expected = {"README.md", "fashion_mnist/train-00000-of-00001.parquet", "fashion_mnist/test-00000-of-00001.parquet"}
    assert files == expected, files
    card = info.card_data
    assert card.configs[0]["data_files"] == [
        {"split": "train", "path": "fashion_mnist/train-*"},
        {"split": "test", "path": "fashion_mnist/test-*"},
    ], card.configs
    label = card.dataset_info["features"][1]
    assert label["dtype"]["class_label"]["names"]["0"] == "T - shirt / top", label
    assert list(label["dtype"]["class_label"]["names"].values()) == list(FASHION_MNIST_LABELS), label
    splits = {split["name"]: split["num_examples"] for split in card.dataset_info["splits"]}
    assert splits == HUB_SIZES, splits
    branches = [ref.name for ref in api.list_repo_refs(FASHION_MNIST_REPO, repo_type="dataset").branches]
    assert branches == ["main"], branches


@pytest.fixture(scope="module")
def hub_run(local_hub, tmp_path_factory):
    """A tiny training run of scripts/train.py with HF_ENDPOINT at the local Hub and no --data_dir:
    `(output folder, log, exit status)`."""
    work = tmp_path_factory.mktemp("hub_run")
    out = work / "run"
    argv = ["--recipe", "quick", "--config_overrides", TINY, "--augmentation", "none", "--normalize", "false"]
    argv += ["--learning_rate", "5e-3", "--warmup_steps", "0", "--lr_scheduler_type", "constant"]
    argv += ["--label_smoothing_factor", "0", "--per_device_train_batch_size", "64", "--max_steps", "8"]
    argv += ["--save_strategy", "no", "--disable_tqdm", "true", "--output_dir", str(out)]
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), *argv],
        cwd=work,
        env=hub_env(local_hub, work),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return out, result.stdout + result.stderr, result.returncode


def test_train_loads_fashion_mnist_from_the_hub_endpoint(local_hub, hub_run):
    """No --data_dir: scripts/train.py finds the endpoint reachable, loads the dataset over HTTP, trains, evaluates."""
    out, log, returncode = hub_run
    assert returncode == 0, log[-4000:]
    source = f"the Hub ({FASHION_MNIST_REPO} at revision main, {local_hub.url})"
    assert f"data: {source}, {HUB_SIZES['train']} train / {HUB_SIZES['test']} eval images" in log, log[-4000:]
    run_info = json.loads((out / "run_info.json").read_text())
    assert run_info["dataset"] == source, run_info["dataset"]
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_samples"] == HUB_SIZES["test"], results
    assert 0 <= results["eval_accuracy"] <= 1, results
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"]["0"] == "T - shirt / top", config["id2label"]  # the names in the Hub's ClassLabel
    served = local_hub.output()
    for split in HUB_SIZES:
        assert f"/fashion_mnist/{split}-00000-of-00001.parquet HTTP/1.1" in served, f"{split} parquet not served"


LOAD_AT_REVISIONS = textwrap.dedent(
    """
    import json, sys
    from hf_vit_d2l.data import DataArguments, load_splits

    counts = {}
    for revision in sys.argv[2:]:
        args = DataArguments(dataset_name=sys.argv[1], dataset_revision=revision)
        train, evaluation, _, description = load_splits(args)
        counts[revision] = [len(train), len(evaluation), description]
    print(json.dumps(counts))
    """
)


def test_dataset_revision_pins_a_commit(local_hub, fashion_mnist_arrays, tmp_path):
    """--dataset_revision reaches load_dataset: a later commit on main does not change what an older sha loads."""
    repo_id = "hf-vit-d2l-tests/fashion_mnist_revisions"
    first = write_fashion_mnist_repo(local_hub, fashion_mnist_arrays, {"train": 96, "test": 32}, repo_id)
    second = write_fashion_mnist_repo(local_hub, fashion_mnist_arrays, {"train": 64, "test": 48}, repo_id)
    assert first != second, "the second commit did not happen"
    result = subprocess.run(
        [sys.executable, "-c", LOAD_AT_REVISIONS, repo_id, first, "main"],
        cwd=tmp_path,
        env=hub_env(local_hub, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts[first][:2] == [96, 32], counts
    assert counts["main"][:2] == [64, 48], counts
    assert counts[first][2] == f"the Hub ({repo_id} at revision {first}, {local_hub.url})", counts


# ------------------------------------------------------------------------------------------- the push round trip

REPO_ID = "hf-vit-d2l-tests/vit-d2l-tiny"
CLIENT_IMAGES = 8


@pytest.fixture(scope="module")
def pushed(local_hub, hub_run, fashion_mnist_arrays, tmp_path_factory) -> SimpleNamespace:
    """The tiny run pushed with `hub.push_to_hub` through `MirrorUploadApi` (the upload, then the card pinning its
    sha: two git commits in the mirror), then a later commit on main with other weights, so that only a load at the
    pinned sha gives the local folder's probabilities.

    Also: the Hub's 256 test images (the first real ones) as PIL images, the first 8 as PNGs for the commands, and
    the local folder's probabilities on all 256.
    """
    out, log, returncode = hub_run
    assert returncode == 0, log[-4000:]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub, "HfApi", functools.partial(MirrorUploadApi, local_hub))
        patch.setattr(hub, "check_hub_ready", lambda: "hf_local_token")  # no token or network check here
        sha = hub.push_to_hub(out, REPO_ID)["commit"]
    card_commit = HfApi(endpoint=local_hub.url).list_repo_refs(REPO_ID).branches[0].target_commit
    other_weights = {name: tensor * 1.5 for name, tensor in load_file(out / "model.safetensors").items()}
    save_file(other_weights, local_hub.repo_path("model", REPO_ID) / "model.safetensors", metadata={"format": "pt"})
    later = local_hub.commit("model", REPO_ID, "Other weights on main, after the pinned commit")

    images = [Image.fromarray(array, mode="L") for array in fashion_mnist_arrays["test"][0][: HUB_SIZES["test"]]]
    work = tmp_path_factory.mktemp("clients")
    (work / "images").mkdir()
    paths = [str(work / "images" / f"{index}.png") for index in range(CLIENT_IMAGES)]
    for image, path in zip(images, paths, strict=False):
        image.save(path)
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    pixel_values = AutoImageProcessor.from_pretrained(out)(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits
        model.load_state_dict(other_weights)
        on_main = model(pixel_values=pixel_values).logits.softmax(-1)
    assert (on_main - logits.softmax(-1)).abs().max() > 1e-3, "main's later weights give the pinned probabilities"
    return SimpleNamespace(
        folder=out,
        sha=sha,
        card_commit=card_commit,
        later=later,
        work=work,
        paths=paths,
        logits=logits,
        probabilities=logits.softmax(-1),
        targets=torch.from_numpy(fashion_mnist_arrays["test"][1][: HUB_SIZES["test"]].astype(np.int64)),
        label_names=[model.config.id2label[index] for index in range(model.config.num_labels)],
    )


def run_client(local_hub, work: Path, command: list[str], **env: str) -> subprocess.CompletedProcess:
    """`command` as a client of the local Hub (`hub_env`: a fresh HF_HOME in `work`); fails the test if it fails."""
    work.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        command, cwd=work, env={**hub_env(local_hub, work), **env}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def weights_served(local_hub, since: int) -> set[str]:
    """The commits of REPO_ID whose model.safetensors the server sent after its first `since` requests."""
    served = re.compile(rf"/{REPO_ID}/resolve/([0-9a-f]{{40}})/model\.safetensors HTTP")
    return {match[1] for line in local_hub.requests()[since:] if (match := served.search(line))}


def max_difference(scores: list[dict[str, float]], pushed) -> float:
    """The largest difference between per-image {label: probability} and the local folder's probabilities."""
    remote = torch.tensor([[image_scores[label] for label in pushed.label_names] for image_scores in scores])
    return float((remote - pushed.probabilities[: len(scores)]).abs().max())


# Run in `python -I` from an empty folder with a meta-path finder that refuses `hf_vit_d2l` (as in
# test_remote_code.py): whatever they run came from the local Hub over HTTP.
BLOCK_PACKAGE = textwrap.dedent(
    """
    import importlib.abc, json, os, runpy, sys

    class BlockPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hf_vit_d2l" or name.startswith("hf_vit_d2l."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked for this test)")
            return None

    sys.meta_path.insert(0, BlockPackage())
    """
)

LOAD_PUSHED_MODEL = BLOCK_PACKAGE + textwrap.dedent(
    """
    try:
        import hf_vit_d2l  # noqa
    except ModuleNotFoundError:
        package_importable = False
    else:
        package_importable = True

    import torch
    from huggingface_hub import hf_hub_download
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    repo, revision, output, *paths = sys.argv[1:]
    images = [Image.open(path) for path in paths]
    model = AutoModelForImageClassification.from_pretrained(repo, trust_remote_code=True, revision=revision).eval()
    processor = AutoImageProcessor.from_pretrained(repo, trust_remote_code=True, revision=revision)
    with torch.no_grad():
        logits = model(**processor(images, return_tensors="pt")).logits
    names = [model.config.id2label[index] for index in range(model.config.num_labels)]
    classify = pipeline("image-classification", model=repo, revision=revision, trust_remote_code=True, device="cpu")
    pipeline_scores = [{result["label"]: result["score"] for result in classify(image, top_k=10)} for image in images]
    json.dump(
        {
            "package_importable": package_importable,
            "loaded_from": [type(model).__module__, type(processor).__module__],
            "scores": [dict(zip(names, row, strict=True)) for row in logits.softmax(-1).tolist()],
            "pipeline": pipeline_scores,
            "card_on_main": open(hf_hub_download(repo, "README.md", revision="main")).read(),
        },
        open(output, "w"),
    )
    """
)

RUN_SPACE_APP = BLOCK_PACKAGE + textwrap.dedent(
    """
    space, output, *paths = sys.argv[1:]
    os.chdir(space)
    sys.path.insert(0, space)
    app = runpy.run_path("app.py", run_name="space")
    from demo import classify

    json.dump(
        {
            "model_module": type(app["model"]).__module__,
            "package_imported": any(name.startswith("hf_vit_d2l") for name in sys.modules),
            "scores": [classify(path, app["model"], app["processor"], top_k=10)[0] for path in paths],
        },
        open(output, "w"),
    )
    """
)


def run_without_the_package(local_hub, work: Path, script: str, *args: str) -> dict:
    """`script` in `python -I` (no PYTHONPATH, no current folder on the path) with `hf_vit_d2l` blocked; its JSON."""
    work.mkdir(parents=True, exist_ok=True)
    env = hub_env(local_hub, work)
    del env["PYTHONPATH"]
    env.update(HF_MODULES_CACHE=str(work / "modules"), MPLBACKEND="Agg", GRADIO_ANALYTICS_ENABLED="False")
    run_client(local_hub, work, [sys.executable, "-I", "-c", script, *args], **env)
    return json.loads((work / "out.json").read_text())


def test_pushed_model_loads_over_http_at_the_pinned_revision(local_hub, pushed):
    """from_pretrained and pipeline over HTTP at the sha the card pins, in a process that cannot import the package:
    the local folder's probabilities within 1e-6."""
    assert pushed.card_commit != pushed.sha, "the card's commit did not follow the upload"
    work = pushed.work / "without_package"
    since = len(local_hub.requests())
    client = run_without_the_package(
        local_hub, work, LOAD_PUSHED_MODEL, REPO_ID, pushed.sha, "out.json", *pushed.paths
    )
    assert client["package_importable"] is False, "the client process could import hf_vit_d2l"
    assert all(module.startswith("transformers_modules.") for module in client["loaded_from"]), client["loaded_from"]
    assert f'revision="{pushed.sha}"' in client["card_on_main"], "the card on main does not pin the upload's commit"
    assert weights_served(local_hub, since) == {pushed.sha}, local_hub.requests()[since:]
    assert max_difference(client["scores"], pushed) <= 1e-6, max_difference(client["scores"], pushed)
    assert max_difference(client["pipeline"], pushed) <= 1e-6, max_difference(client["pipeline"], pushed)


def test_space_app_loads_the_pinned_revision_without_the_package(local_hub, pushed):
    """The Space folder (`demo.write_space_folder(out, repo, sha)`): its app.py, run where the package cannot be
    imported, loads the model over HTTP at the sha and classifies as the local folder does."""
    pytest.importorskip("gradio", reason='the Space needs gradio: pip install -e ".[demo]"')
    from hf_vit_d2l.demo import write_space_folder

    work = pushed.work / "space_client"
    space = write_space_folder(str(work / "space"), REPO_ID, pushed.sha)
    since = len(local_hub.requests())
    client = run_without_the_package(local_hub, work, RUN_SPACE_APP, space, str(work / "out.json"), *pushed.paths)
    assert client["package_imported"] is False, "the Space imported hf_vit_d2l"
    assert client["model_module"].startswith("transformers_modules."), client["model_module"]
    assert weights_served(local_hub, since) == {pushed.sha}, local_hub.requests()[since:]
    assert max_difference(client["scores"], pushed) <= 1e-6, max_difference(client["scores"], pushed)


def test_predict_loads_the_repo_by_id_at_the_pinned_sha(local_hub, pushed):
    since = len(local_hub.requests())
    command = [sys.executable, "-m", "hf_vit_d2l.predict", *pushed.paths, "--model", REPO_ID]
    command += ["--revision", pushed.sha, "--top_k", "10", "--json", "--no_progress"]
    results = json.loads(run_client(local_hub, pushed.work / "predict", command).stdout)
    assert [Path(result["file"]).name for result in results] == [Path(path).name for path in pushed.paths], results
    scores = [{entry["label"]: entry["score"] for entry in result["predictions"]} for result in results]
    assert weights_served(local_hub, since) == {pushed.sha}, local_hub.requests()[since:]
    assert max_difference(scores, pushed) <= 1e-6, max_difference(scores, pushed)


def test_evaluation_loads_the_repo_by_id_at_the_pinned_sha(local_hub, pushed):
    """The evaluation command on the Hub's test split (256 images, over HTTP too): the local folder's numbers."""
    work = pushed.work / "evaluation"
    since = len(local_hub.requests())
    command = [sys.executable, "-m", "hf_vit_d2l.evaluation", "--model_name_or_path", REPO_ID]
    command += ["--revision", pushed.sha, "--output_dir", str(work / "eval")]
    run_client(local_hub, work, command)
    results = json.loads((work / "eval" / "eval_results.json").read_text())
    labels = pushed.targets
    predictions = pushed.logits.argmax(-1)
    confusion = torch.zeros(10, 10, dtype=torch.int64)
    confusion.index_put_((labels, predictions), torch.ones_like(labels), accumulate=True)
    loss = torch.nn.functional.cross_entropy(pushed.logits, labels).item()
    assert weights_served(local_hub, since) == {pushed.sha}, local_hub.requests()[since:]
    assert results["num_samples"] == HUB_SIZES["test"], results["num_samples"]
    assert results["confusion_matrix"] == confusion.tolist(), results["confusion_matrix"]
    assert results["accuracy"] == (predictions == labels).double().mean().item(), results["accuracy"]
    assert abs(results["loss"] - loss) <= 1e-6, (results["loss"], loss)


def test_demo_serves_the_repo_by_id_at_the_pinned_sha(local_hub, pushed):
    """`python -m hf_vit_d2l.demo --model REPO --revision SHA`, driven through gradio_client."""
    pytest.importorskip("gradio", reason='the demo needs gradio: pip install -e ".[demo]"')
    from gradio_client import Client, handle_file

    work = pushed.work / "demo"
    work.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    since = len(local_hub.requests())
    command = [sys.executable, "-m", "hf_vit_d2l.demo", "--model", REPO_ID, "--revision", pushed.sha]
    command += ["--port", str(port), "--top_k", "10"]
    env = {**hub_env(local_hub, work), "MPLBACKEND": "Agg", "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(work / "demo.log", "wb") as log:
        server = subprocess.Popen(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_served(url, server, work / "demo.log")
        client = Client(url, verbose=False)
        scores = []
        for path in pushed.paths:
            labels, *_ = client.predict(handle_file(path), api_name="/classify")
            scores.append({entry["label"]: entry["confidence"] for entry in labels["confidences"]})
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert weights_served(local_hub, since) == {pushed.sha}, local_hub.requests()[since:]
    assert max_difference(scores, pushed) <= 1e-6, max_difference(scores, pushed)


def wait_until_served(url: str, server: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    """Return once `url` answers 200; fail with the server's output if it exits or does not answer in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the demo exited with {server.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    pytest.fail(f"the demo did not answer at {url} in {timeout:.0f} s:\n{log.read_text(errors='replace')[-4000:]}")


def test_fine_tuning_starts_from_the_pinned_revision(local_hub, pushed):
    """scripts/train.py --model_name_or_path REPO --model_revision SHA: two steps at learning rate 0 on a slice of the
    Hub's dataset, so the saved weights are the pinned sha's bit for bit (main's later ones are 1.5 times those)."""
    work = pushed.work / "fine_tune"
    out = work / "run"
    argv = ["--model_name_or_path", REPO_ID, "--model_revision", pushed.sha, "--recipe", "quick"]
    argv += ["--augmentation", "none", "--learning_rate", "0", "--per_device_train_batch_size", "32"]
    argv += ["--max_train_samples", "64", "--max_eval_samples", "64", "--max_steps", "2", "--save_strategy", "no"]
    argv += ["--disable_tqdm", "true", "--output_dir", str(out)]
    since = len(local_hub.requests())
    run_client(local_hub, work, [sys.executable, str(REPO / "scripts" / "train.py"), *argv])
    assert weights_served(local_hub, since) == {pushed.sha}, local_hub.requests()[since:]
    tuned = load_file(out / "model.safetensors")
    pinned = load_file(pushed.folder / "model.safetensors")
    assert tuned.keys() == pinned.keys(), sorted(tuned.keys() ^ pinned.keys())
    changed = [name for name in pinned if not torch.equal(tuned[name], pinned[name])]
    assert not changed, f"weights that differ from the pinned commit's: {changed}"
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_samples"] == 64, results
    assert 0 <= results["eval_accuracy"] <= 1, results  # through evaluate's metric, in a fresh HF_HOME
