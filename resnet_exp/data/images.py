"""Pixels: any image file -> RGB -> the normalised tensor the network sees. Shared by training
(data.py) and by the registered model (inference.py), so both preprocess every image the same way.

Only PIL, numpy and torch are imported here: a served model must not need `datasets` or Lightning.

    python -c "from PIL import Image; from resnet_exp.data.images import image_to_tensor; \
print(image_to_tensor(Image.new('RGB', (50, 30)), 32).shape)"
"""

from __future__ import annotations

import base64
import binascii
import io
import re

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from resnet_exp.model.netspec import IMAGENET_MEAN, IMAGENET_STD

# Limits on one image sent to a served or loaded model. 20 MiB holds any camera JPEG; 40
# megapixels (e.g. 8000 x 5000) decodes to 120 MB of RGB, so a small file claiming more is a
# decompression bomb and is refused before its pixels are decoded.
MAX_IMAGE_BYTES = 20 * 2**20
MAX_IMAGE_PIXELS = 40_000_000
# Limit on one request: the pixels of all its images together, as their headers state them.
# Memory no longer grows with it (each image is decoded and shrunk before the next, so at most
# one full-size image, <= 120 MB of RGB, is held at a time), but decoding time does: a 40 MP PNG
# takes about a second on one core, so an unbounded request ties a worker up for minutes. 400 MP
# passes 32 photos of a 12 MP phone camera (384 MP) and refuses 32 images of 40 MP (1.28 GP).
MAX_REQUEST_PIXELS = 400_000_000
# Decoding shrinks an image to no less than this many times the model's size (JPEG draft mode
# scales by 1/2, 1/4 or 1/8 while decoding; other formats are box-reduced right after loading);
# the final bilinear resize then gives what resizing the full image gives, within rounding.
REDUCING_GAP = 2


BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/=\s]+")


class ImageInputError(ValueError):
    """One image that cannot be used: the message says which and why."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Transparent pixels become white; 16-bit and float grey are rescaled
    to 8 bits rather than clipped (PIL's own I;16 -> RGB clips nearly everything to white)."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        grey = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or grey.max() > 255:
            grey = grey / 257.0
        elif image.mode == "F" and grey.max() <= 1.0:
            grey = grey * 255.0
        return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def resize_pixels(image: Image.Image, image_size: int) -> np.ndarray:
    """RGB PIL image -> uint8 array (image_size, image_size, 3): what the image store keeps."""
    image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def normalise(
    pixels: torch.Tensor,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float32 scaled to 0..1 and normalised with ImageNet's mean and
    std, on the device the pixels are on (the GPU, in training on one)."""
    mean_t = torch.tensor(mean, device=pixels.device).view(3, 1, 1)
    std_t = torch.tensor(std, device=pixels.device).view(3, 1, 1)
    # (x / 255 - mean) / std as one fused multiply-add: 16 instead of 35 ms for a batch of 32 at
    # 224 px on 2 cores, where a bf16 training step takes about 550 ms.
    return torch.addcmul(-mean_t / std_t, pixels.float(), 1 / (255 * std_t))


def image_to_tensor(
    image: Image.Image,
    image_size: int,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> torch.Tensor:
    """RGB PIL image -> normalised float tensor of shape (3, image_size, image_size)."""
    pixels = torch.from_numpy(resize_pixels(image, image_size).copy())  # (H, W, 3)
    return normalise(pixels.permute(2, 0, 1), mean, std)


def image_from_upload(value: object, fit: int | None = None) -> Image.Image:
    """One uploaded image -> RGB. `value` is the file's bytes, or its base64 text (a `data:`
    URL prefix is accepted). With `fit`, the image is decoded straight to no less than
    REDUCING_GAP x fit pixels a side (see decode_file), never held at full size as RGB.
    Raises ImageInputError saying what is wrong with it."""
    return decode_file(upload_bytes(value), fit)


def upload_bytes(value: object) -> bytes:
    """The image file in an upload (bytes, or base64 text), size-checked; not decoded."""
    data = _file_bytes(value)
    if not data:
        raise ImageInputError("empty image: expected the bytes of an image file (JPEG, PNG, ...)")
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageInputError(
            f"image file of {len(data):,} bytes is over the limit of {MAX_IMAGE_BYTES:,} bytes"
        )
    return data


def header_pixels(data: bytes) -> int:
    """width x height as the file's header states it (nothing decoded); ImageInputError if the
    bytes are no image or claim more than MAX_IMAGE_PIXELS."""
    width, height = _open(data).size
    _check_pixels(width, height)
    return width * height


def check_request_pixels(pixels: int, limit: int = MAX_REQUEST_PIXELS) -> None:
    """Refuse a request whose images hold more than `limit` pixels in all."""
    if pixels > limit:
        raise ImageInputError(
            f"the request's images hold {pixels:,} pixels in all, over this model's "
            f"limit of {limit:,} pixels per request (max_request_pixels): send fewer or "
            "smaller images per request"
        )


def decode_file(data: bytes, fit: int | None = None) -> Image.Image:
    """An image file's bytes -> RGB. With `fit`, decoded straight to a size near `fit`: JPEG in
    draft mode (scaled while decoding: a 6300 px JPEG for a 224 px model decodes at 1/8 size),
    any other format box-reduced right after loading, before the RGB conversion."""
    image = _open(data)
    _check_pixels(*image.size)
    try:
        if fit:
            image.draft(image.mode, (REDUCING_GAP * fit, REDUCING_GAP * fit))  # no-op but JPEG
        image.load()
        if fit:
            image = _reduce(image, fit)
        return to_rgb(image)
    except Image.DecompressionBombError as err:
        raise ImageInputError(
            f"{err} (this model's limit is {MAX_IMAGE_PIXELS:,} pixels)"
        ) from None
    except (OSError, ValueError, SyntaxError) as err:  # e.g. "image file is truncated"
        raise ImageInputError(f"damaged image file ({len(data):,} bytes): {err}") from None


def _reduce(image: Image.Image, fit: int) -> Image.Image:
    """Box-average a loaded image down to no less than REDUCING_GAP x fit pixels a side."""
    factors = tuple(max(1, side // (REDUCING_GAP * fit)) for side in image.size)
    if factors == (1, 1):
        return image
    if image.mode in ("P", "1") or image.mode.startswith("I;16"):
        image = to_rgb(image)  # reduce() cannot average palette indices or 16-bit grey
    return image.reduce(factors)


def _open(data: bytes) -> Image.Image:
    """Image.open on bytes (reads the header, decodes no pixel), with every way of not being an
    image reported as ImageInputError."""
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:  # PIL's own, far higher limit
        raise ImageInputError(
            f"{err} (this model's limit is {MAX_IMAGE_PIXELS:,} pixels)"
        ) from None
    except UnidentifiedImageError:
        raise ImageInputError(
            f"not an image file ({len(data):,} bytes): "
            "expected JPEG, PNG, GIF, BMP, TIFF, WebP or another format PIL reads"
        ) from None
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageInputError(f"damaged image file ({len(data):,} bytes): {err}") from None


def _check_pixels(width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageInputError(
            f"image of {width} x {height} pixels is over the limit of "
            f"{MAX_IMAGE_PIXELS:,} pixels (a decompression bomb?)"
        )


def _file_bytes(value: object) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview, np.bytes_)):
        data = bytes(value)
        # MLflow hands `{"inputs": {"image": [...]}}` requests over as base64 *bytes*. Binary image
        # formats always hold bytes outside the base64 alphabet (PNG's \x89, JPEG's \xff, NULs).
        if BASE64_TEXT.fullmatch(data):
            try:
                return _decode_base64(data.decode("ascii"))
            except ImageInputError:
                pass  # plain text, not base64: reported below as "not an image file"
        return data
    if not isinstance(value, str):
        raise ImageInputError(
            f"expected image file bytes or base64 text, got {type(value).__name__}"
        )
    return _decode_base64(value)


def _decode_base64(text: str) -> bytes:
    text = text.strip()
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]  # data:image/png;base64,....
    try:
        # validate=True refuses characters outside the base64 alphabet instead of skipping them;
        # whitespace (line breaks from `base64` tools) is removed first.
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        # The message names no character of the text: an error answer never echoes a request.
        raise ImageInputError(f"not valid base64 ({len(text):,} characters): {err}") from None
