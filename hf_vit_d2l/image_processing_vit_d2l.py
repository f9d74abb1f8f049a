"""Image processor of the book's ViT: the d2l Fashion-MNIST transform (resize to 96x96, scale to [0, 1]).

It is transformers' stock `ViTImageProcessorPil` (the PIL/NumPy backend, which needs no torchvision) with the
book's settings, plus one thing the stock class lacks: it converts any input to the model's channel count, so an
RGB photo, an RGBA PNG or a grayscale array all reach a 1-channel model as 1 channel (ITU-R 601-2 luma, as PIL's
`convert("L")`).
"""

import numpy as np
from PIL import Image
from transformers import ViTImageProcessorPil

# PIL's "L" conversion weights (ITU-R 601-2 luma).
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class ViTD2LImageProcessor(ViTImageProcessorPil):
    r"""
    The book's `d2l.FashionMNIST(resize=(96, 96))` transform: `transforms.Resize` (bilinear) then `ToTensor`
    (scale to [0, 1]); no normalisation, no crop.

    Args:
        size (`dict`, defaults to `{"height": 96, "width": 96}`): output size; follows the model's `image_size`.
        num_channels (`int`, defaults to 1): channels the model expects (`config.num_channels`); PIL images of any
            mode, and (H, W), (H, W, C) or (C, H, W) arrays and tensors with 1, 2 (gray + alpha), 3 or 4 channels,
            are converted to it.
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

    def process_image(self, image, do_convert_rgb=None, input_data_format=None, **kwargs):
        if isinstance(image, Image.Image):
            target_mode = "L" if self.num_channels == 1 else "RGB"
            if image.mode != target_mode:
                if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                    # Composite on black, the Fashion-MNIST background, instead of dropping alpha.
                    rgba = image.convert("RGBA")
                    background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
                    image = Image.alpha_composite(background, rgba)
                image = image.convert(target_mode)
            return super().process_image(image, do_convert_rgb=False, input_data_format=input_data_format, **kwargs)
        array = super().process_image(image, do_convert_rgb=False, input_data_format=input_data_format, **kwargs)
        return self._to_num_channels(array)

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
