"""hf-vit-d2l: the Vision Transformer of *Dive into Deep Learning* as a Hugging Face model package.

Importing the package registers the model with transformers' Auto classes (`AutoConfig`, `AutoModel`,
`AutoModelForImageClassification`, `AutoImageProcessor`).
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

# From its module: before transformers 5.18, `transformers.AutoImageProcessor` is a placeholder without torchvision.
from transformers.models.auto.image_processing_auto import AutoImageProcessor

from .configuration_vit_d2l import FASHION_MNIST_LABELS, ViTD2LConfig
from .convert import CheckpointConversionError, from_d2l_state_dict, to_transformers_vit
from .image_processing_vit_d2l import ViTD2LImageProcessor
from .modeling_vit_d2l import ViTD2LForImageClassification, ViTD2LModel, ViTD2LPreTrainedModel
from .presets import PRESETS, get_preset

__version__ = "0.1.0"

AutoConfig.register(ViTD2LConfig.model_type, ViTD2LConfig, exist_ok=True)
AutoModel.register(ViTD2LConfig, ViTD2LModel, exist_ok=True)
AutoModelForImageClassification.register(ViTD2LConfig, ViTD2LForImageClassification, exist_ok=True)
AutoImageProcessor.register(ViTD2LConfig, image_processor_classes={"pil": ViTD2LImageProcessor}, exist_ok=True)

# Saved folders carry the code files and an `auto_map`, so they load with `trust_remote_code=True` where this
# package is not installed.
ViTD2LConfig.register_for_auto_class("AutoConfig")
ViTD2LModel.register_for_auto_class("AutoModel")
ViTD2LForImageClassification.register_for_auto_class("AutoModelForImageClassification")
ViTD2LImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "CheckpointConversionError",
    "FASHION_MNIST_LABELS",
    "PRESETS",
    "ViTD2LConfig",
    "ViTD2LForImageClassification",
    "ViTD2LImageProcessor",
    "ViTD2LModel",
    "ViTD2LPreTrainedModel",
    "from_d2l_state_dict",
    "get_preset",
    "to_transformers_vit",
]
