"""Accuracy through `evaluate`: the metric script shipped in the package (`hf_vit_d2l/accuracy_metric.py`), loaded
by its path, as training's `compute_metrics` and the evaluation command use it; no network on loading."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from transformers import EvalPrediction

from hf_vit_d2l import accuracy_metric
from hf_vit_d2l.training import compute_metrics


def test_accuracy_matches_a_hand_count():
    metric = accuracy_metric.load_accuracy()
    # 6 predictions, 4 right (indices 0, 1, 3, 4): 4 / 6.
    result = metric.compute(predictions=[0, 1, 2, 2, 9, 3], references=[0, 1, 1, 2, 9, 4])
    assert result == {"accuracy": 4 / 6}, result
    assert metric.compute(predictions=[3, 3], references=[3, 3])["accuracy"] == 1.0, "all right is not 1"
    assert metric.compute(predictions=[1, 2], references=[0, 0])["accuracy"] == 0.0, "all wrong is not 0"


def test_compute_metrics_is_the_evaluate_metric():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=1000)
    predictions = np.where(rng.random(1000) < 0.7, labels, (labels + 1) % 10)  # about 70% right
    right = int((predictions == labels).sum())
    metrics = compute_metrics(EvalPrediction(predictions=predictions, label_ids=labels))
    assert metrics == {"accuracy": right / 1000}, (metrics, right)
    metric_module = type(accuracy_metric.load_accuracy()).__module__
    assert metric_module.startswith("evaluate_modules.metrics.accuracy_metric."), metric_module


# A fresh process and HF_HOME: record every socket the loading opens (an audit hook sees each connect and name
# lookup) and where the metric's code came from. The file is imported by its path, as it lies in the package,
# without the package's __init__ (torch and transformers), which has no part in loading it.
LOAD_METRIC = textwrap.dedent(
    """
    import importlib.util, json, sys

    requests = []

    def audit(event, args):
        if event in ("socket.connect", "socket.getaddrinfo"):
            requests.append([event, repr(args)])

    sys.addaudithook(audit)
    spec = importlib.util.spec_from_file_location("accuracy_metric", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    metric = module.load_accuracy()
    copied = sys.modules[type(metric).__module__].__file__
    origin = json.load(open(copied[: -len(".py")] + ".json"))["original file path"]
    result = metric.compute(predictions=[1, 2, 3, 4], references=[1, 2, 0, 4])
    print(json.dumps({"requests": requests, "origin": origin, "accuracy": result["accuracy"]}))
    """
)


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE=1", "online"])
def test_loading_makes_no_network_request(tmp_path, offline):
    """Offline it must not stall; online a metric loaded by its path must not ask the Hub either."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env["HF_HOME"] = str(tmp_path / "hf_home")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", LOAD_METRIC, accuracy_metric.__file__],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["requests"] == [], loaded["requests"]
    assert loaded["origin"] == accuracy_metric.__file__, loaded["origin"]
    assert loaded["accuracy"] == 0.75, loaded
