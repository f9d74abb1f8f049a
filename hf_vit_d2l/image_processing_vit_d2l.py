"""Image processor of the book's ViT: the d2l Fashion-MNIST transform (resize to 96x96, scale to [0, 1]).

It is transformers' stock `ViTImageProcessorPil` (the PIL/NumPy backend, which needs no torchvision) with the
book's settings, plus one thing the stock class lacks: it converts any input to the model's channel count, so an
RGB photo, an RGBA PNG or a grayscale array all reach a 1-channel model as 1 channel (ITU-R 601-2 luma, as PIL's
`convert("L")`).
"""

import os

import numpy as np
from PIL import Image
from transformers import ViTImageProcessorPil
from transformers.image_utils import load_image

try:
    import torch
except ImportError:  # the processor itself works without torch (numpy output)
    torch = None

# PIL's "L" conversion weights (ITU-R 601-2 luma).
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _channel_axis(array: np.ndarray) -> int | None:
    """0 for (C, H, W), -1 for (H, W, C), with C in 1..4; channels-first wins when both fit, as in transformers."""
    if array.ndim != 3:
        return None
    if array.shape[0] in (1, 2, 3, 4):
        return 0
    if array.shape[-1] in (1, 2, 3, 4):
        return -1
    return None


class ViTD2LImageProcessor(ViTImageProcessorPil):
    r"""
    The book's `d2l.FashionMNIST(resize=(96, 96))` transform: `transforms.Resize` (bilinear) then `ToTensor`
    (scale to [0, 1]); no normalisation, no crop.

    Args:
        size (`dict`, defaults to `{"height": 96, "width": 96}`): output size; follows the model's `image_size`.
        num_channels (`int`, defaults to 1): channels the model expects (`config.num_channels`); PIL images of any
            mode, and (H, W), (H, W, C) or (C, H, W) arrays and tensors with 1, 2 (gray + alpha), 3 or 4 channels,
            are converted to it. Transparency is composited on black; 16-bit images are scaled to 8 bits (/257).
            Integer arrays are on the 0-255 scale; float arrays/tensors in [0, 1] are taken as already scaled
            (torchvision's `ToTensor` convention), floats above 1 as 0-255.
        do_normalize (`bool`, defaults to `False`): the book does not normalise; the improved recipes do, with
            `image_mean`/`image_std` set to Fashion-MNIST's statistics.
    """

    model_input_names = ["pixel_values"]
    size = {"height": 96, "width": 96}
    do_normalize = False
    image_mean = [0.5]
    image_std = [0.5]

    def __init__(self, num_channels: int = 1, **kwargs):
        if num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 (grayscale) or 3 (RGB), got {num_channels!r}.")
        super().__init__(**kwargs)
        self.num_channels = num_channels

    def _prepare_images_structure(self, images, expected_ndims: int = 3):
        """Accept one image, a list of images or a 4-D batch, and fail with a clear message on anything else.

        The stock version rejects 2-D (H, W) arrays and prints the whole array in its error; here a 2-D array is one
        grayscale image, and every input is checked up front so a bad one names its position and what was wrong.
        """
        if isinstance(images, (list, tuple)):
            items = []
            for item in images:
                items.extend(item if isinstance(item, (list, tuple)) else [item])
        else:
            items = [images]
        if not items:
            raise ValueError("No images given: pass a PIL image, an array/tensor, a path or URL, or a list of them.")
        flat = []
        for index, item in enumerate(items):
            where = f"image {index}" if len(items) > 1 else "the image"
            if isinstance(item, (str, os.PathLike)):
                try:
                    item = load_image(os.fspath(item))
                except Exception as error:
                    raise ValueError(
                        f"Could not read {where} from {os.fspath(item)!r}: {type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else ''}. Pass an existing image file, an http(s) "
                        "URL, a PIL image, or an array."
                    ) from None
            if isinstance(item, Image.Image):
                flat.append(item)
                continue
            if torch is not None and torch.is_tensor(item):
                item = item.detach().cpu()
                item = item.float() if item.dtype in (torch.bfloat16, torch.float16) else item
                item = item.numpy()
            if not isinstance(item, np.ndarray):
                raise ValueError(
                    f"Cannot read {where}: got {type(item).__name__}; expected a PIL image, a numpy array or torch "
                    "tensor of shape (H, W), (H, W, C) or (C, H, W), a 4-D batch, or a path/URL."
                )
            if item.dtype == bool:
                item = item.astype(np.uint8) * 255
            if not (np.issubdtype(item.dtype, np.integer) or np.issubdtype(item.dtype, np.floating)):
                raise ValueError(f"Cannot read {where}: array dtype {item.dtype} is not a numeric image type.")
            if item.ndim == 2:
                flat.append(item[None])  # (H, W) -> (1, H, W)
            elif item.ndim == 3 and _channel_axis(item) is not None:
                flat.append(item)
            elif item.ndim == 4:
                flat.extend(item[i] for i in range(item.shape[0]))
            else:
                raise ValueError(
                    f"Cannot read {where}: array of shape {tuple(item.shape)}. Expected (H, W), (H, W, C) or "
                    "(C, H, W) with C in 1..4 channels, or a 4-D batch of those."
                )
        for index, item in enumerate(flat):
            if isinstance(item, np.ndarray) and (item.ndim != 3 or _channel_axis(item) is None):
                raise ValueError(
                    f"Cannot read image {index} of the batch: shape {tuple(item.shape)} is not (H, W, C) or (C, H, W) "
                    "with C in 1..4 channels."
                )
        return flat

    def process_image(self, image, do_convert_rgb=None, input_data_format=None, **kwargs):
        if isinstance(image, Image.Image):
            image = self._pil_to_mode(image, "L" if self.num_channels == 1 else "RGB")
            return super().process_image(image, do_convert_rgb=False, input_data_format=None, **kwargs)
        if torch is not None and torch.is_tensor(image):
            image = image.detach().cpu()
            image = image.float() if image.dtype in (torch.bfloat16, torch.float16) else image
        array = np.asarray(image)
        if array.ndim == 2:  # also when called directly, without _prepare_images_structure
            array = array[None]
        if np.issubdtype(array.dtype, np.floating):
            # Float images in [0, 1] are already scaled (torchvision's ToTensor convention); bring them to the 0-255
            # scale that `rescale` (x / 255) expects. Floats above 1 are taken to be on the 0-255 scale already.
            array = array.astype(np.float32)
            if array.size and float(np.nanmax(array)) <= 1.0:
                array = array * 255.0
        elif array.dtype != np.uint8:
            # Other integer types: 0-255 values as they are, wider ranges taken as 16-bit (0-65535 -> 0-255).
            array = array.astype(np.float32)
            if array.size and float(array.max()) > 255:
                array = array / 257.0
        axis = _channel_axis(array)
        array = array if axis == 0 else np.moveaxis(array, -1, 0)
        array = super().process_image(array, do_convert_rgb=False, input_data_format="channels_first", **kwargs)
        return self._to_num_channels(array)

    def resize(self, image: np.ndarray, size, resample=None, **kwargs) -> np.ndarray:
        """PIL resize; float images are resized per channel in PIL's 32-bit float mode instead of being rounded to
        8 bits (the stock path refuses non-integer floats above 1). uint8 images take the stock path, which is the
        book's `transforms.Resize` on a PIL image exactly."""
        if np.issubdtype(image.dtype, np.floating) and size.height and size.width:
            if not isinstance(resample, int):
                resample = Image.Resampling.BILINEAR
            channels = [
                np.asarray(
                    Image.fromarray(np.ascontiguousarray(c, dtype=np.float32)).resize(
                        (size.width, size.height), resample
                    )
                )
                for c in image
            ]
            return np.stack(channels)
        return super().resize(image, size, resample=resample, **kwargs)

    @staticmethod
    def _pil_to_mode(image: Image.Image, target_mode: str) -> Image.Image:
        """Any PIL mode -> "L" or "RGB", compositing transparency on black (the Fashion-MNIST background)."""
        if image.mode == target_mode:
            return image
        if image.mode.startswith("I;16") or image.mode in ("I", "F"):
            # 16/32-bit integer and float images: PIL's convert("L") clips at 255, so scale to 8 bits first.
            array = np.asarray(image, dtype=np.float64)
            peak = float(array.max()) if array.size else 0.0
            if image.mode.startswith("I;16") or (image.mode == "I" and peak > 255):
                array = array / 257.0  # 0..65535 -> 0..255
            elif image.mode == "F" and peak <= 1.0:
                array = array * 255.0  # float in [0, 1]
            image = Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")
            return image if target_mode == "L" else image.convert(target_mode)
        if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            image = Image.alpha_composite(background, rgba)
        return image.convert(target_mode)

    def _to_num_channels(self, array: np.ndarray) -> np.ndarray:
        """(C, H, W) with C in 1..4 -> (num_channels, H, W)."""
        channels = array.shape[0]
        if channels not in (1, 2, 3, 4):
            raise ValueError(
                f"Cannot read an image with {channels} channels (array shape {array.shape}); expected 1, 2, 3 or 4 "
                "channels in (H, W), (H, W, C) or (C, H, W) layout."
            )
        if channels in (2, 4):  # gray/colour + alpha: composite on black
            alpha = array[-1:].astype(np.float32)
            alpha = alpha / 255.0 if array.dtype == np.uint8 or alpha.max() > 1.0 else alpha
            array = (array[:-1].astype(np.float32) * alpha).astype(array.dtype)
            channels -= 1
        if self.num_channels == 1 and channels == 3:
            luma = np.tensordot(_LUMA, array.astype(np.float32), axes=1)[None]
            array = np.clip(np.rint(luma), 0, 255).astype(np.uint8) if array.dtype == np.uint8 else luma
        elif self.num_channels == 3 and channels == 1:
            array = np.repeat(array, 3, axis=0)
        return array


__all__ = ["ViTD2LImageProcessor"]
