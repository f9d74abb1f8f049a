"""The Gradio demo: its API (gradio_client) against `pipeline`, a real headless Chromium session, the command
line's error lines, and the Hub Space folder run where the package cannot be imported.

Needs the `demo` extra (gradio) and, for the browser test, Debian's `chromium` + `chromium-driver` and selenium;
with HF_VIT_D2L_REQUIRE_BROWSER=1 (set in CI) a missing browser fails the test instead of skipping it.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from hf_vit_d2l import ViTD2LConfig, ViTD2LForImageClassification, ViTD2LImageProcessor

gr = pytest.importorskip("gradio", reason='the demo needs gradio: pip install -e ".[demo]"')
from gradio_client import Client, handle_file  # noqa: E402

from hf_vit_d2l import demo  # noqa: E402

build_demo, classify, launch_kwargs = demo.build_demo, demo.classify, demo.launch_kwargs
load_model, write_space_folder = demo.load_model, demo.write_space_folder

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"image_size": 28, "patch_size": 7, "hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4}
WAIT_S = 30


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo") / "tiny-vit"
    torch.manual_seed(0)
    ViTD2LForImageClassification(ViTD2LConfig(**TINY, num_hidden_layers=2)).save_pretrained(folder)
    ViTD2LImageProcessor(size={"height": 28, "width": 28}).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def test_images(fashion_mnist_arrays, tmp_path_factory):
    """Real test images as PNGs: a grayscale one, the same inverted, and RGBA / 16-bit variants."""
    folder = tmp_path_factory.mktemp("demo_images")
    images, _ = fashion_mnist_arrays["test"]
    gray = Image.fromarray(images[0], mode="L")
    paths = {name: str(folder / f"{name}.png") for name in ("gray", "inverted", "rgba", "16bit")}
    gray.save(paths["gray"])
    ImageOps.invert(gray).save(paths["inverted"])
    rgba = np.dstack([np.repeat(images[1][..., None], 3, -1), np.where(images[1] > 0, 255, 64).astype(np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(paths["rgba"])
    Image.fromarray(images[2].astype(np.uint16) * 257).save(paths["16bit"])
    mode = Image.open(paths["16bit"]).mode
    assert mode.startswith("I;16") or mode == "I", mode
    return paths


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(model_folder):
    model, processor = load_model(model_folder)
    app = build_demo(model, processor, top_k=5)
    port = free_port()
    app.launch(prevent_thread_lock=True, quiet=True, **launch_kwargs(port))
    try:
        yield f"http://127.0.0.1:{port}/", model, processor
    finally:
        app.close()


def probabilities_of(model, processor, image) -> torch.Tensor:
    with torch.no_grad():
        return model(**processor(images=image, return_tensors="pt")).logits.softmax(-1)[0]


def test_client_gives_the_pipeline_probabilities(server, model_folder, test_images):
    from transformers import pipeline

    url, model, processor = server
    classifier = pipeline("image-classification", model=model, image_processor=processor, device="cpu")
    client = Client(url, verbose=False)
    for name, path in test_images.items():
        labels, seen, overlay, note = client.predict(handle_file(path), api_name="/classify")
        expected = classifier(path, top_k=5)
        assert [c["label"] for c in labels["confidences"]] == [r["label"] for r in expected], name
        np.testing.assert_allclose(
            [c["confidence"] for c in labels["confidences"]], [r["score"] for r in expected], rtol=0, atol=1e-6
        )
        with Image.open(seen) as shown, Image.open(overlay) as heat:
            assert shown.size == heat.size == (280, 280)
        assert ("transparency" in note) == (name == "rgba"), note
        assert ("16-bit" in note) == (name == "16bit"), note
        assert ("dark item on a light background" in note) == (name == "inverted"), note


def test_classify_shows_the_model_input():
    model = ViTD2LForImageClassification(ViTD2LConfig(**TINY, num_hidden_layers=1)).eval()
    processor = ViTD2LImageProcessor(size={"height": 28, "width": 28})
    image = Image.fromarray(np.tile(np.arange(28, dtype=np.uint8) * 9, (28, 1)), mode="L")
    scores, seen, overlay, note = classify(image, model, processor, top_k=10)
    assert len(scores) == 10
    assert abs(sum(scores.values()) - 1) < 1e-5
    # Each of the 28 input columns becomes a 10-pixel-wide column of the shown 280x280 image, unblurred.
    shown = np.asarray(seen.convert("L"))
    np.testing.assert_array_equal(shown[::10, ::10], np.asarray(image))
    assert note == ""


def unreadable_file(folder, case: str) -> str:
    """A file the demo cannot classify, in one of the ways predict words: a text file named .png, an empty file, a
    decompression bomb (a PNG header declaring 20,000 x 20,000 pixels, no pixel data), a truncated JPEG."""
    import struct
    import zlib

    path = folder / {"text": "notes.png", "empty": "empty.png", "bomb": "bomb.png", "truncated": "cut.jpg"}[case]
    if case == "text":
        path.write_text("a shopping list, not a picture\n")
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "bomb":

        def chunk(kind, data):
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        header = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 0, 0, 0, 0)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    else:
        noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(noise).save(path, quality=95)
        path.write_bytes(path.read_bytes()[:900])
    return str(path)


@pytest.mark.parametrize("case", ["text", "empty", "bomb", "truncated"])
def test_an_unreadable_upload_gets_the_line_predict_prints(server, tmp_path, case):
    from gradio_client.exceptions import AppError

    from hf_vit_d2l.predict import predict_files

    url, model, processor = server
    path = unreadable_file(tmp_path, case)
    [result] = predict_files([path], model, processor, progress=False)
    assert result.error, f"predict must refuse the {case} file"
    client = Client(url, verbose=False)
    with pytest.raises(AppError) as raised:
        client.predict(handle_file(path), api_name="/classify")
    assert str(raised.value) == f"{os.path.basename(path)}: {result.error}", "the demo must show predict's line"
    assert "verbose error reporting" not in str(raised.value)


def chrome():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        chromium = None
    if not (chromium and driver):
        message = "needs Debian's chromium + chromium-driver and `pip install selenium` (scripts/setup.sh)"
        if os.environ.get("HF_VIT_D2L_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_demo_in_headless_chromium(server, test_images, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, model, processor = server
    probabilities = probabilities_of(model, processor, Image.open(test_images["gray"]).convert("RGB"))
    expected = model.config.id2label[int(probabilities.argmax())]
    browser = chrome()
    try:
        wait = WebDriverWait(browser, WAIT_S)
        browser.get(url)
        upload = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#upload input[type=file]"))

        def shown(element_id):  # an <img> inside the component, loaded (naturalWidth > 0)
            images = browser.find_elements(By.CSS_SELECTOR, f"#{element_id} img")
            return bool(images) and browser.execute_script("return arguments[0].naturalWidth", images[0]) > 0

        def top_label():
            found = browser.find_elements(By.CSS_SELECTOR, "#prediction [data-testid='label-output-value']")
            return found[0].text.strip() if found else ""

        # A light-on-black test image: its label, the model's input and the overlay appear, with no warning.
        upload.send_keys(test_images["gray"])
        wait.until(lambda b: top_label() and shown("attention") and shown("model-input"))
        assert top_label() == expected
        assert browser.find_element(By.ID, "note").text.strip() == ""
        browser.save_screenshot(str(tmp_path / "demo.png"))
        if os.environ.get("DEMO_SCREENSHOT"):
            browser.save_screenshot(os.environ["DEMO_SCREENSHOT"])

        # The same image inverted: the note says so; "Invert colours" brings back the first answer.
        browser.find_element(By.CSS_SELECTOR, "#upload button[title='Remove Image']").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))
        browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(test_images["inverted"])
        wait.until(lambda b: "dark item" in b.find_element(By.ID, "note").text)
        next(b for b in browser.find_elements(By.TAG_NAME, "button") if b.text == "Invert colours").click()
        wait.until(lambda b: b.find_element(By.ID, "note").text.strip() == "" and top_label() == expected)

        # A drawing (black strokes on the white canvas) is classified as the inverted, white-on-black image.
        before = browser.find_element(By.CSS_SELECTOR, "#model-input img").get_attribute("src")
        next(b for b in browser.find_elements(By.TAG_NAME, "button") if b.text == "Draw").click()
        wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#sketch button[title='Brush']").is_displayed())
        browser.find_element(By.CSS_SELECTOR, "#sketch button[title='Brush']").click()
        stroke = ActionChains(browser).move_to_element_with_offset(
            browser.find_element(By.CSS_SELECTOR, "#sketch canvas"), -40, -60
        )
        stroke.click_and_hold()
        for _ in range(6):
            stroke.move_by_offset(0, 20)
        stroke.release().perform()
        wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#model-input img").get_attribute("src") != before)
    finally:
        browser.quit()
    with Image.open(tmp_path / "demo.png") as screenshot:
        assert screenshot.format == "PNG"
        assert screenshot.size[0] >= 1000


def run_demo_script(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    command = [sys.executable, os.path.join(REPO_ROOT, "scripts", "demo.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def test_demo_script_says_what_is_wrong_with_a_model_folder(model_folder, tmp_path):
    missing = run_demo_script("--model", str(tmp_path / "no-such-model"))
    assert missing.returncode == 2, missing.stderr[-2000:]
    (line,) = missing.stderr.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'no-such-model'}: no such folder."), line
    damaged = tmp_path / "damaged"
    shutil.copytree(model_folder, damaged)
    (damaged / "model.safetensors").write_bytes((damaged / "model.safetensors").read_bytes()[:100])
    result = run_demo_script("--model", str(damaged))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and str(damaged / "model.safetensors") in line, line


def test_demo_script_refuses_a_bad_max_image_pixels(model_folder):
    result = run_demo_script("--model", model_folder, "--max_image_pixels", "0")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == ["error: --max_image_pixels must be >= 1, got 0"], result.stderr


def test_load_model_tells_a_missing_folder_from_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for path in ("./nope", "runs/quick", "runs/quick/final", str(tmp_path / "nope")):
        with pytest.raises(ValueError, match=r"^.*: no such folder\. Pass a model folder"):
            load_model(path)
    # USER/NAME is looked up on the Hub (offline or absent there: transformers' first line, after the id).
    hub_id = r"^Could not load someone/no-such-model \(not a local folder, so as a Hub id\)"
    with pytest.raises(ValueError, match=hub_id):
        load_model("someone/no-such-model")


# Runs the Space's app.py in `python -I` with `hf_vit_d2l` refused, as on a Hub Space where it is not installed.
SPACE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, os, runpy, sys

    class BlockPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hf_vit_d2l" or name.startswith("hf_vit_d2l."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked for this test)")

    sys.meta_path.insert(0, BlockPackage())
    space, image, output = sys.argv[1:4]
    os.chdir(space)
    sys.path.insert(0, space)
    app = runpy.run_path("app.py", run_name="space")
    from demo import classify

    scores, _, _, _ = classify(image, app["model"], app["processor"], top_k=10)
    json.dump(
        {
            "blocks": type(app["demo"]).__name__,
            "examples": app["EXAMPLES"],
            "model_module": type(app["model"]).__module__,
            "package_imported": any(name.startswith("hf_vit_d2l") for name in sys.modules),
            "scores": scores,
        },
        open(output, "w"),
    )
    """
)


def test_space_folder_runs_without_the_package(model_folder, test_images, tmp_path):
    from huggingface_hub import metadata_load

    space = tmp_path / "space"
    write_space_folder(str(space), "someone/vit-d2l-quick", "0123abcd")
    app = (space / "app.py").read_text()
    assert "'someone/vit-d2l-quick'" in app
    assert "'0123abcd'" in app
    assert "trust_remote_code=True" in app
    metadata = metadata_load(space / "README.md")
    assert metadata["sdk"] == "gradio"
    assert metadata["sdk_version"] == gr.__version__
    assert metadata["app_file"] == "app.py"
    assert metadata["models"] == ["someone/vit-d2l-quick"]
    requirements = (space / "requirements.txt").read_text().split()
    assert f"gradio=={gr.__version__}" in requirements
    assert "torch" in requirements

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(
        HF_HUB_OFFLINE="1", VIT_D2L_MODEL=model_folder, HF_MODULES_CACHE=str(tmp_path / "modules"), MPLBACKEND="Agg"
    )
    output = tmp_path / "result.json"
    command = [sys.executable, "-I", "-c", SPACE_SCRIPT, str(space), test_images["gray"], str(output)]
    proc = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(output.read_text())
    assert result["blocks"] == "Blocks"
    assert result["package_imported"] is False
    assert result["model_module"].startswith("transformers_modules.")
    assert len(result["examples"]) == 10
    assert all(name.startswith("examples/") for name in result["examples"]), result["examples"]
    model, processor = load_model(model_folder)
    expected, _, _, _ = classify(test_images["gray"], model, processor, top_k=10)
    assert result["scores"].keys() == expected.keys()
    np.testing.assert_allclose(list(result["scores"].values()), list(expected.values()), rtol=0, atol=1e-6)


def test_push_to_hub_dry_run_writes_the_space_folder(model_folder, tmp_path):
    command = [
        sys.executable,
        os.path.join(REPO_ROOT, "scripts", "push_to_hub.py"),
        model_folder,
        "--repo_id",
        "someone/vit-d2l",
        "--dry_run",
        str(tmp_path / "upload"),
        "--space_repo_id",
        "someone/vit-d2l-demo",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=180, env=dict(os.environ, HF_HUB_OFFLINE="1")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    space = tmp_path / "upload-space"
    assert f"wrote the Space folder to {space}" in result.stdout
    app = (space / "app.py").read_text()
    assert "'someone/vit-d2l'" in app
    assert "'main'" in app
    assert "trust_remote_code=True" in app
    assert {"demo.py", "attention_maps.py", "requirements.txt", "README.md"} <= {p.name for p in space.iterdir()}
