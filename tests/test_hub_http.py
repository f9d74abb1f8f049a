"""The Hub paths over real HTTP, against a local Hub server (olah, `tests/hub_server.py`, the `local_hub` fixture).

The server holds `zalando-datasets/fashion_mnist` in the Hub's own layout (parquet per split, README with
`configs` and `dataset_info`), built from a slice of the real IDX files. Clients reach it by `HF_ENDPOINT` only,
in subprocesses with a fresh `HF_HOME`, so every file they read came over HTTP.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import HUB_SIZES
from hub_server import FASHION_MNIST_REPO, write_fashion_mnist_repo
from huggingface_hub import HfApi

from hf_vit_d2l import FASHION_MNIST_LABELS

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


def test_train_loads_fashion_mnist_from_the_hub_endpoint(local_hub, tmp_path):
    """No --data_dir: scripts/train.py finds the endpoint reachable, loads the dataset over HTTP, trains, evaluates."""
    out = tmp_path / "run"
    argv = ["--recipe", "quick", "--config_overrides", TINY, "--augmentation", "none", "--normalize", "false"]
    argv += ["--learning_rate", "5e-3", "--warmup_steps", "0", "--lr_scheduler_type", "constant"]
    argv += ["--label_smoothing_factor", "0", "--per_device_train_batch_size", "64", "--max_steps", "8"]
    argv += ["--save_strategy", "no", "--disable_tqdm", "true", "--output_dir", str(out)]
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), *argv],
        cwd=tmp_path,
        env=hub_env(local_hub, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
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
