"""transformers' own common model and config tests, run against ViTD2LModel / ViTD2LForImageClassification.

`ModelTesterMixin` and `ConfigTester` are not in the transformers wheel: they come from the source distribution of
the installed version, fetched with pip at test time into ``~/.cache/hf-vit-d2l/transformers-sdist/`` (reused when
present; ``HF_VIT_D2L_CACHE`` moves it). The set-up mirrors ``tests/models/vit/test_modeling_vit.py`` of transformers.

The sdist ships only the top-level ``tests/*.py``, not the folders they import from, so three names get stand-ins:
``ExportTesterMixin`` (the ``torch.export`` tests of ``tests/exporters/``, which therefore do not run here),
``GenerationTesterMixin`` (this is not a generative model) and ``config_common_kwargs`` (the base-config keyword
values that ``ConfigTester.check_config_arguments_init`` checks are kept).
"""

import importlib.util
import os
import subprocess
import sys
import tarfile
import types
import unittest
from pathlib import Path

import pytest
import transformers
from transformers.models.auto import modeling_auto
from transformers.utils import logging as transformers_logging

from hf_vit_d2l import ViTD2LConfig, ViTD2LForImageClassification, ViTD2LModel

CACHE = Path(os.environ.get("HF_VIT_D2L_CACHE", "~/.cache/hf-vit-d2l")).expanduser() / "transformers-sdist"
PACKAGE = "transformers_sdist_tests"


def sdist_tests_folder() -> Path:
    """The `tests/` folder of the installed transformers' sdist, downloaded and unpacked once."""
    version = transformers.__version__
    folder = CACHE / f"transformers-{version}" / "tests"
    if (folder / "__init__.py").exists():
        return folder
    archive = CACHE / f"transformers-{version}.tar.gz"
    if not archive.exists():
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--retries", "1"]
        command += ["--timeout", "20", "--dest", str(CACHE), f"transformers=={version}"]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or not archive.exists():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(
                f"cannot fetch the transformers {version} sdist from PyPI (needed for its test mixins): {last}"
            )
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(f"transformers-{version}/tests/")]
        tar.extractall(CACHE, members=members, filter="data")
    # The repository's tests/ is a package (ConfigTester imports its own folder as one); the sdist omits the file.
    (folder / "__init__.py").touch()
    return folder


def import_common_tests():
    """Import the sdist's test_modeling_common / test_configuration_common as a package of their own."""
    if f"{PACKAGE}.test_modeling_common" in sys.modules:
        return sys.modules[f"{PACKAGE}.test_modeling_common"], sys.modules[f"{PACKAGE}.test_configuration_common"]
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(sdist_tests_folder())]
    sys.modules[PACKAGE] = package
    stand_ins = {
        "exporters.test_export": {"ExportTesterMixin": type("ExportTesterMixin", (), {})},
        "generation.test_utils": {"GenerationTesterMixin": type("GenerationTesterMixin", (), {})},
        "utils.test_configuration_utils": {
            "config_common_kwargs": {
                "return_dict": False,
                "output_hidden_states": True,
                "dtype": "float16",
                "chunk_size_feed_forward": 5,
                "architectures": ["ViTD2LForImageClassification"],
                "id2label": {0: "label"},
                "label2id": {"label": 0},
                "problem_type": "regression",
            }
        },
    }
    for name, attributes in stand_ins.items():
        parent, child = name.split(".")
        sys.modules.setdefault(f"{PACKAGE}.{parent}", types.ModuleType(f"{PACKAGE}.{parent}"))
        module = types.ModuleType(f"{PACKAGE}.{name}")
        module.__dict__.update(attributes)
        sys.modules[f"{PACKAGE}.{name}"] = module
    modules = []
    for name in ("test_configuration_common", "test_modeling_common"):
        spec = importlib.util.spec_from_file_location(f"{PACKAGE}.{name}", package.__path__[0] + f"/{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        modules.append(module)
    return modules[1], modules[0]


pytest.importorskip("parameterized", reason="transformers' common tests need `parameterized` (the dev extra)")
modeling_common, configuration_common = import_common_tests()
ModelTesterMixin, floats_tensor, ids_tensor = (
    modeling_common.ModelTesterMixin,
    modeling_common.floats_tensor,
    modeling_common.ids_tensor,
)
ConfigTester = configuration_common.ConfigTester


class ViTD2LModelTester:
    """transformers' `ViTModelTester` sizes (batch 13, image 30, patch 2, hidden 32, 4 heads, MLP 37, 2 layers)."""

    def __init__(
        self, parent, batch_size=13, image_size=30, patch_size=2, num_channels=1, type_sequence_label_size=10
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.is_training = True
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.intermediate_size = 37
        self.type_sequence_label_size = type_sequence_label_size
        self.seq_length = (image_size // patch_size) ** 2 + 1  # patches + <cls>

    def get_config(self):
        return ViTD2LConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            embedding_dropout_prob=0.1,
            block_dropout_prob=0.1,
            num_labels=self.type_sequence_label_size,
            attn_implementation="eager",
        )

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        labels = ids_tensor([self.batch_size], self.type_sequence_label_size)
        return self.get_config(), pixel_values, labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}


@pytest.fixture(scope="module", autouse=True)
def listed_in_the_auto_mappings():
    """The mixin picks labels and the tests to run from the names in transformers' Auto mappings, where a model
    inside transformers is listed; list this one there too for the duration of the module."""
    mappings = [
        (modeling_auto.MODEL_MAPPING_NAMES, "ViTD2LModel"),
        (modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES, "ViTD2LForImageClassification"),
    ]
    for mapping, name in mappings:
        mapping[ViTD2LConfig.model_type] = name
    # Some tests read transformers' warnings (e.g. "Reinit due to size mismatch"): run at its default verbosity,
    # whatever an earlier test in the same process set.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_warning()
    yield
    transformers_logging.set_verbosity(verbosity)
    for mapping, _ in mappings:
        mapping.pop(ViTD2LConfig.model_type, None)


class ViTD2LModelTest(ModelTesterMixin, unittest.TestCase):
    """As transformers' `ViTModelTest` (without its pipeline mixin: that one needs Hub checkpoints)."""

    all_model_classes = (ViTD2LModel, ViTD2LForImageClassification)
    fx_compatible = False
    test_resize_embeddings = False
    test_torch_exportable = True

    def setUp(self):
        self.model_tester = ViTD2LModelTester(self)
        # Stock ViT's ConfigTester uses hidden_size=37; this config requires it divisible by the head count.
        self.config_tester = ConfigTester(
            self, config_class=ViTD2LConfig, has_text_modality=False, hidden_size=37, num_attention_heads=1
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip(reason="ViT does not use inputs_embeds")
    def test_inputs_embeds(self):
        pass

    @unittest.skip(reason="transformers skips it for ViT: CUDA 'misaligned address' errors in later tests")
    def test_multi_gpu_data_parallel_forward(self):
        pass

    def test_model_get_set_embeddings(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIsInstance(model.get_input_embeddings(), transformers.pytorch_utils.nn.Module)
            self.assertIsNone(model.get_output_embeddings())

    def test_model(self):
        config, pixel_values, _ = self.model_tester.prepare_config_and_inputs()
        result = ViTD2LModel(config).eval()(pixel_values)
        tester = self.model_tester
        self.assertEqual(result.last_hidden_state.shape, (tester.batch_size, tester.seq_length, tester.hidden_size))

    def test_for_image_classification(self):
        config, pixel_values, labels = self.model_tester.prepare_config_and_inputs()
        tester = self.model_tester
        result = ViTD2LForImageClassification(config).eval()(pixel_values, labels=labels)
        self.assertEqual(result.logits.shape, (tester.batch_size, tester.type_sequence_label_size))
        # RGB images, as stock ViT's test checks greyscale ones.
        config.num_channels = 3
        pixel_values = floats_tensor([tester.batch_size, 3, tester.image_size, tester.image_size])
        result = ViTD2LForImageClassification(config).eval()(pixel_values)
        self.assertEqual(result.logits.shape, (tester.batch_size, tester.type_sequence_label_size))
