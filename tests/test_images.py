"""Image uploads as the registered model receives them: bytes, base64 text, every PIL mode, and
each kind of bad input with the message it gets."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from conftest import save_image
from resnet_exp.images import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, ImageInputError, image_from_upload


def encoded(mode: str = "RGB", fmt: str = "PNG", size: int = 20) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", (size, size), (200, 30, 30)).convert(mode)
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels: a decompression bomb's shape."""
    data = encoded()
    ihdr_at = data.index(b"IHDR")
    fields = struct.pack(">II", width, height) + data[ihdr_at + 12:ihdr_at + 17]
    chunk = b"IHDR" + fields
    return data[:ihdr_at] + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[ihdr_at + 21:]


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "I;16", "CMYK", "1"])
def test_every_pil_mode_becomes_rgb(tmp_path, mode):
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    path = save_image(tmp_path / f"x.{fmt.lower()}", mode=mode, fmt=fmt)
    image = image_from_upload(path.read_bytes())
    assert image.mode == "RGB" and image.size == (24, 24)


@pytest.mark.parametrize("wrap", [
    lambda b: b,
    lambda b: base64.b64encode(b).decode(),
    lambda b: base64.b64encode(b),  # what MLflow passes for {"inputs": ...} requests
    lambda b: base64.encodebytes(b).decode(),  # with line breaks, as the `base64` tool writes
    lambda b: "data:image/jpeg;base64," + base64.b64encode(b).decode(),
    lambda b: bytearray(b),
], ids=["bytes", "base64", "base64-bytes", "base64-lines", "data-url", "bytearray"])
def test_uploads_are_accepted_as_bytes_or_base64(wrap):
    image = image_from_upload(wrap(encoded(fmt="JPEG")))
    red, green, _ = image.getpixel((10, 10))
    assert image.size == (20, 20) and red > 150 and green < 80


@pytest.mark.parametrize("value, message", [
    (b"", "empty image"),
    ("", "empty image"),
    ("not base64!!", "not base64 text"),
    (base64.b64encode(b"hello world, not an image").decode(), "not an image file"),
    (b"GIF89a\x00\x00 but nothing more", "not an image file"),
    (encoded(fmt="JPEG")[:200], "damaged image file"),
    (12345, "expected image file bytes or base64 text, got int"),
    (None, "got NoneType"),
])
def test_bad_uploads_say_what_is_wrong(value, message):
    with pytest.raises(ImageInputError, match=message):
        image_from_upload(value)


def test_an_oversized_file_is_refused_before_decoding():
    with pytest.raises(ImageInputError, match=f"over the limit of {MAX_IMAGE_BYTES:,} bytes"):
        image_from_upload(b"\x89PNG" + bytes(MAX_IMAGE_BYTES))


@pytest.mark.parametrize("width, height", [(8000, 5001), (30000, 30000)])
def test_a_decompression_bomb_is_refused_from_its_header(width, height):
    bomb = png_claiming(width, height)
    assert len(bomb) < 200 and width * height > MAX_IMAGE_PIXELS
    with pytest.raises(ImageInputError, match="limit"):
        image_from_upload(bomb)


def test_an_image_at_the_pixel_limit_is_still_read_from_its_header():
    # 40 MP exactly passes the header check (and then fails only because the data is 20 px)
    with pytest.raises(ImageInputError, match="damaged image file"):
        image_from_upload(png_claiming(8000, 5000))
