"""The Hub paths over real HTTP, against a local Hub server (olah, `tests/hub_server.py`, the `local_hub` fixture).

The server holds `zalando-datasets/fashion_mnist` in the Hub's own layout (parquet per split, README with
`configs` and `dataset_info`), built from a slice of the real IDX files. Clients reach it by `HF_ENDPOINT` only,
in subprocesses with a fresh `HF_HOME`, so every file they read came over HTTP.
"""

import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from conftest import HUB_SIZES
from hub_server import FASHION_MNIST_REPO, MirrorUploadApi, write_fashion_mnist_repo
from huggingface_hub import HfApi
from PIL import Image
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


# Runs in `python -I` from an empty folder with a meta-path finder that refuses `hf_vit_d2l` (as in
# test_remote_code.py): everything it runs came from the local Hub over HTTP, at the pinned revision.
LOAD_PUSHED_MODEL = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hf_vit_d2l" or name.startswith("hf_vit_d2l."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked for this test)")
            return None

    sys.meta_path.insert(0, BlockPackage())
    try:
        import hf_vit_d2l  # noqa
    except ModuleNotFoundError:
        package_importable = False
    else:
        package_importable = True

    import numpy as np
    import torch
    from huggingface_hub import hf_hub_download
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    repo, revision, images_path, output = sys.argv[1:5]
    images = [Image.fromarray(array, mode="L") for array in np.load(images_path)]
    model = AutoModelForImageClassification.from_pretrained(repo, trust_remote_code=True, revision=revision).eval()
    processor = AutoImageProcessor.from_pretrained(repo, trust_remote_code=True, revision=revision)
    with torch.no_grad():
        probabilities = model(**processor(images, return_tensors="pt")).logits.softmax(-1)
    classify = pipeline("image-classification", model=repo, revision=revision, trust_remote_code=True, device="cpu")
    scores = [{result["label"]: result["score"] for result in classify(image, top_k=10)} for image in images]
    json.dump(
        {
            "package_importable": package_importable,
            "loaded_from": [type(model).__module__, type(processor).__module__],
            "probabilities": probabilities.tolist(),
            "pipeline": scores,
            "card_on_main": open(hf_hub_download(repo, "README.md", revision="main")).read(),
        },
        open(output, "w"),
    )
    """
)


def test_pushed_model_loads_over_http_at_the_pinned_revision(local_hub, hub_run, fashion_mnist_arrays, monkeypatch):
    """push_to_hub (uploads committed into the mirror), then from_pretrained and pipeline over HTTP at the sha the
    card pins, in a process that cannot import the package: the local folder's probabilities within 1e-6."""
    out, log, returncode = hub_run
    assert returncode == 0, log[-4000:]
    repo_id = "hf-vit-d2l-tests/vit-d2l-tiny"
    monkeypatch.setattr(huggingface_hub, "HfApi", functools.partial(MirrorUploadApi, local_hub))
    monkeypatch.setattr(hub, "check_hub_ready", lambda: "hf_local_token")  # no token or network check here
    pushed = hub.push_to_hub(out, repo_id)
    sha = pushed["commit"]
    refs = HfApi(endpoint=local_hub.url).list_repo_refs(repo_id)
    assert refs.branches[0].target_commit != sha, "the card's commit did not follow the upload"

    work = out.parent / "client"
    work.mkdir()
    images = fashion_mnist_arrays["test"][0][:8]
    np.save(work / "images.npy", images)
    env = hub_env(local_hub, work)
    env["HF_MODULES_CACHE"] = str(work / "modules")
    del env["PYTHONPATH"]
    result = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            LOAD_PUSHED_MODEL,
            repo_id,
            sha,
            str(work / "images.npy"),
            str(work / "out.json"),
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    client = json.loads((work / "out.json").read_text())
    assert client["package_importable"] is False, "the client process could import hf_vit_d2l"
    assert all(module.startswith("transformers_modules.") for module in client["loaded_from"]), client["loaded_from"]
    assert f'revision="{sha}"' in client["card_on_main"], "the card on main does not pin the upload's commit"
    assert f"/{repo_id}/resolve/{sha}/model.safetensors HTTP/1.1" in local_hub.output(), "weights not served at sha"

    model = AutoModelForImageClassification.from_pretrained(out).eval()
    processor = AutoImageProcessor.from_pretrained(out)
    with torch.no_grad():
        local = model(**processor([Image.fromarray(a, mode="L") for a in images], return_tensors="pt")).logits
    local = local.softmax(-1)
    remote = torch.tensor(client["probabilities"])
    assert (remote - local).abs().max() <= 1e-6, (remote - local).abs().max()
    names = [model.config.id2label[i] for i in range(local.shape[1])]
    pipeline_scores = torch.tensor([[scores[name] for name in names] for scores in client["pipeline"]])
    assert (pipeline_scores - local).abs().max() <= 1e-6, (pipeline_scores - local).abs().max()
