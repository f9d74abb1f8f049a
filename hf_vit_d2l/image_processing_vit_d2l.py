"""Image processor of the book's ViT: transformers' `ViTImageProcessorPil` with the d2l Fashion-MNIST transform,
converting any input to the model's channel count (ITU-R 601-2 luma for RGB, as PIL's `convert("L")`)."""

import os
import warnings

import numpy as np
from PIL import Image
from transformers import ViTImageProcessorPil
from transformers.image_utils import load_image

try:
    import torch
except ImportError:  # the processor itself works without torch (numpy output)
    torch = None

# PIL's "L" conversion weights (ITU-R 601-2 luma).
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# A float image whose maximum is at most this is a [0, 1] image that resampling (bicubic, Lanczos) pushed a little
# above 1; above it, an image on the 0-255 scale. A 0-255 image that dark is no more than black.
UNIT_SCALE_OVERSHOOT = 1.5
CHANNELS = (1, 2, 3, 4)  # gray, gray + alpha, RGB, RGBA


def convertible(image: Image.Image) -> Image.Image:
    """`image`, with mode "La" (premultiplied alpha, which PIL cannot convert to RGB or L) read as "LA"."""
    return image.convert("LA") if image.mode == "La" else image


def conversion_loses_information(image: Image.Image) -> str | None:
    """What the RGB conversion of a PIL image (`transformers.image_utils.load_image`, as `pipeline` does) drops, in
    words, or None when it keeps everything the model could use. For a once-per-run warning."""
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        if convertible(image).convert("RGBA").getchannel("A").getextrema()[0] < 255:
            return "transparency (the alpha channel is dropped, not blended: transparent pixels keep their colour)"
    elif image.mode.startswith("I;16") or image.mode == "I":
        low, high = image.getextrema()
        if low < 0 or high > 255:
            return f"{'16' if image.mode != 'I' else '32'}-bit depth (values above 255 become 255, white)"
    elif image.mode == "F":
        array = np.asarray(image)
        if array.size and (array.min() < 0 or array.max() > 255 or not np.array_equal(array, np.floor(array))):
            return "float values (clipped to 0-255 and cut to whole numbers)"
    return None


def flat_list_of_images(images) -> list:
    """One image, a list of images or a 4-D batch -> a flat list of PIL images and (C, H, W) arrays, each checked so
    that a bad one names its position and the fault (transformers' own flattening prints the whole array)."""
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
                first_line = str(error).splitlines()[0] if str(error) else ""
                raise ValueError(
                    f"Could not read {where} from {os.fspath(item)!r}: {type(error).__name__}: {first_line}. Pass an "
                    "existing image file, an http(s) URL, a PIL image, or an array."
                ) from None
        if isinstance(item, Image.Image):
            if item.width == 0 or item.height == 0:
                raise ValueError(f"Cannot read {where}: the PIL image is empty ({item.width}x{item.height} pixels).")
            if item.mode == "F":
                check_finite(np.asarray(item), where)
            flat.append(item)
            continue
        if torch is not None and torch.is_tensor(item):
            item = item.detach().cpu()
            item = (item.float() if item.dtype in (torch.bfloat16, torch.float16) else item).numpy()
        if not isinstance(item, np.ndarray):
            raise ValueError(
                f"Cannot read {where}: got {type(item).__name__}; expected a PIL image, a numpy array or torch "
                "tensor of shape (H, W), (H, W, C) or (C, H, W), a 4-D batch, or a path/URL."
            )
        if item.dtype == bool:
            item = item.astype(np.uint8) * 255
        if not (np.issubdtype(item.dtype, np.integer) or np.issubdtype(item.dtype, np.floating)):
            raise ValueError(f"Cannot read {where}: array dtype {item.dtype} is not a numeric image type.")
        if item.size == 0:
            raise ValueError(
                f"Cannot read {where}: array of shape {tuple(item.shape)} is empty (a zero-size dimension)."
            )
        batch = list(item) if item.ndim == 4 else [item]
        for array in batch:
            array = array[None] if array.ndim == 2 else array  # (H, W) -> (1, H, W)
            if array.ndim == 3 and array.shape[0] not in CHANNELS and array.shape[-1] in CHANNELS:
                array = np.moveaxis(array, -1, 0)  # (H, W, C) -> (C, H, W); channels-first wins when both fit
            if array.ndim != 3 or array.shape[0] not in CHANNELS:
                raise ValueError(
                    f"Cannot read {where}: array of shape {tuple(array.shape)}. Expected (H, W), (H, W, C) or "
                    "(C, H, W) with C in 1..4 channels, or a 4-D batch of those."
                )
            check_finite(array, where)
            flat.append(array)
    return flat


def check_finite(array: np.ndarray, where: str) -> None:
    """Refuse NaN and infinite values: they would reach the model and make every score NaN."""
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise ValueError(
            f"Cannot read {where}: {bad} of its {array.size} values are NaN or infinite. Replace them first (e.g. "
            "np.nan_to_num), or fix the step that produced the image."
        )


def to_255_scale(array: np.ndarray) -> np.ndarray:
    """A float or non-uint8 integer image -> float32 on the 0-255 scale; one warning names the rules applied."""
    rules = []
    is_float = np.issubdtype(array.dtype, np.floating)
    array = array.astype(np.float32)
    low = float(array.min())
    high = float(array.max())
    if low < 0:
        rules.append("negative values: clipped to 0")
        array = np.maximum(array, 0.0)
    if is_float and high <= 1.0:
        array = array * 255.0
    elif is_float and high <= UNIT_SCALE_OVERSHOOT:
        rules.append(
            f"float values slightly above 1 (at most {UNIT_SCALE_OVERSHOOT}, e.g. a resampling overshoot): clipped "
            "to [0, 1], not read on the 0-255 scale"
        )
        array = np.minimum(array, 1.0) * 255.0
    elif is_float:
        rules.append(f"float values above {UNIT_SCALE_OVERSHOOT}: read on the 0-255 scale")
    elif high > 255:
        rules.append("integer values above 255: read as 16-bit (0-65535 divided by 257)")
        array = array / 257.0
    if float(array.max()) > 255:
        rules.append("values above the top of the scale: clipped to 255")
        array = np.minimum(array, 255.0)
    if rules:
        warnings.warn(f"ViTD2LImageProcessor: {'; '.join(rules)}.", UserWarning, stacklevel=2)
    return array


def to_channels(array: np.ndarray, num_channels: int) -> np.ndarray:
    """(C, H, W) with C in 1..4 -> (num_channels, H, W): alpha composited on black, RGB to luma or gray to RGB."""
    channels = array.shape[0]
    if channels in (2, 4):  # gray/colour + alpha: composite on black (the Fashion-MNIST background)
        alpha = array[-1:].astype(np.float32)
        alpha = alpha / 255.0 if array.dtype == np.uint8 or alpha.max() > 1.0 else alpha
        array = (array[:-1].astype(np.float32) * alpha).astype(array.dtype)
        channels -= 1
    if num_channels == 1 and channels == 3:
        luma = np.tensordot(LUMA, array.astype(np.float32), axes=1)[None]
        array = np.clip(np.rint(luma), 0, 255).astype(np.uint8) if array.dtype == np.uint8 else luma
    elif num_channels == 3 and channels == 1:
        array = np.repeat(array, 3, axis=0)
    return array


class ViTD2LImageProcessor(ViTImageProcessorPil):
    r"""
    The book's `d2l.FashionMNIST(resize=(96, 96))` transform: `transforms.Resize` (bilinear) then `ToTensor`
    (scale to [0, 1]); no normalisation, no crop.

    PIL images and paths/URLs follow `pipeline`: `load_image` (EXIF orientation, then `convert("RGB")`), then
    `convert("L")` for a 1-channel model; `conversion_loses_information(image)` says what that drops. Arrays and
    tensors ((H, W), (H, W, C) or (C, H, W) with C in 1..4, or 4-D batches) are converted as they are: alpha is
    composited on black, RGB becomes luma. Integers are on the 0-255 scale (wider ranges as 16-bit); floats up to 1
    on `ToTensor`'s scale, up to 1.5 a resampling overshoot (clipped to 1), larger ones on the 0-255 scale. Every
    rule that changes values warns; NaN, infinite values and empty images raise a `ValueError`.

    Args:
        size (`dict`, defaults to `{"height": 96, "width": 96}`): output size; follows the model's `image_size`.
        num_channels (`int`, defaults to 1): channels the model expects (`config.num_channels`): 1 or 3.
        do_normalize (`bool`, defaults to `False`): the book does not normalise; the improved recipes do.
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

    def preprocess(self, images, *args, **kwargs):
        """The stock `preprocess` on a checked, flat list of images."""
        return super().preprocess(flat_list_of_images(images), *args, **kwargs)

    def process_image(self, image, do_convert_rgb=None, input_data_format=None, **kwargs) -> np.ndarray:
        """One image -> (num_channels, H, W) on the 0-255 scale (uint8 for PIL and uint8 input)."""
        if isinstance(image, Image.Image):
            image = load_image(convertible(image))
            image = image.convert("L") if self.num_channels == 1 else image
            return super().process_image(image, do_convert_rgb=False, input_data_format=None, **kwargs)
        (array,) = flat_list_of_images(image)
        if array.dtype != np.uint8:
            array = to_255_scale(array)  # the scale that `rescale` (x / 255) expects
        array = super().process_image(array, do_convert_rgb=False, input_data_format="channels_first", **kwargs)
        return to_channels(array, self.num_channels)

    def resize(self, image: np.ndarray, size, resample=None, **kwargs) -> np.ndarray:
        """Float images are resized per channel in PIL's float mode, not rounded to 8 bits (the stock path refuses
        non-integer floats above 1); uint8 ones take the stock path, the book's `transforms.Resize` exactly."""
        if np.issubdtype(image.dtype, np.floating) and size.height and size.width:
            if not isinstance(resample, int):
                resample = Image.Resampling.BILINEAR
            channels = [
                Image.fromarray(c).resize((size.width, size.height), resample) for c in image.astype(np.float32)
            ]
            return np.stack([np.asarray(channel) for channel in channels])
        return super().resize(image, size, resample=resample, **kwargs)


__all__ = ["ViTD2LImageProcessor", "conversion_loses_information"]
