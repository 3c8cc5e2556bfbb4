"""Image uploads as the registered model receives them: bytes, base64 text, every PIL mode, and
each kind of bad input with the message it gets."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from conftest import REPO as REPO_ROOT
from conftest import save_image
from resnet_exp.data.images import (
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    ImageInputError,
    image_from_upload,
)


def encoded(mode: str = "RGB", fmt: str = "PNG", size: int = 20) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", (size, size), (200, 30, 30)).convert(mode)
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels: a decompression bomb's shape."""
    data = encoded()
    ihdr_at = data.index(b"IHDR")
    fields = struct.pack(">II", width, height) + data[ihdr_at + 12 : ihdr_at + 17]
    chunk = b"IHDR" + fields
    return data[:ihdr_at] + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[ihdr_at + 21 :]


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "I;16", "CMYK", "1"])
def test_every_pil_mode_becomes_rgb(tmp_path, mode):
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    path = save_image(tmp_path / f"x.{fmt.lower()}", mode=mode, fmt=fmt)
    image = image_from_upload(path.read_bytes())
    assert image.mode == "RGB" and image.size == (24, 24)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda b: b,
        lambda b: base64.b64encode(b).decode(),
        lambda b: base64.b64encode(b),  # what MLflow passes for {"inputs": ...} requests
        lambda b: base64.encodebytes(b).decode(),  # with line breaks, as the `base64` tool writes
        lambda b: "data:image/jpeg;base64," + base64.b64encode(b).decode(),
        lambda b: bytearray(b),
    ],
    ids=["bytes", "base64", "base64-bytes", "base64-lines", "data-url", "bytearray"],
)
def test_uploads_are_accepted_as_bytes_or_base64(wrap):
    image = image_from_upload(wrap(encoded(fmt="JPEG")))
    red, green, _ = image.getpixel((10, 10))
    assert image.size == (20, 20) and red > 150 and green < 80


@pytest.mark.parametrize(
    "value, message",
    [
        (b"", "empty image"),
        ("", "empty image"),
        ("not base64!!", "not valid base64"),
        (base64.b64encode(b"hello world, not an image").decode(), "not an image file"),
        (b"GIF89a\x00\x00 but nothing more", "not an image file"),
        (encoded(fmt="JPEG")[:200], "damaged image file"),
        (12345, "expected image file bytes or base64 text, got int"),
        (None, "got NoneType"),
    ],
)
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


# --- decoding straight to the model's size -----------------------------------------------------


def big_image(width: int, height: int) -> Image.Image:
    """A compressible but not flat RGB image (gradients and a checkerboard): large in pixels,
    small as a file (6300 x 6300 is about 150 kB of PNG). Built from uint8 rows and columns, so
    40 MP cost no more than the image itself."""
    import numpy as np

    x, y = np.arange(width), np.arange(height)[:, None]
    red = np.broadcast_to((x * 255 // width).astype(np.uint8), (height, width))
    green = np.broadcast_to((y * 255 // height).astype(np.uint8), (height, width))
    blue = ((x // 37 % 2).astype(np.uint8) ^ (y // 53 % 2).astype(np.uint8)) * np.uint8(200)
    return Image.fromarray(np.dstack([red, green, blue]), "RGB")


def test_a_large_jpeg_is_decoded_in_draft_mode(monkeypatch):
    from PIL import JpegImagePlugin

    from resnet_exp.data.images import REDUCING_GAP, decode_file

    buffer = io.BytesIO()
    big_image(3000, 2000).save(buffer, format="JPEG", quality=85)
    requests = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        requests.append(size)
        return original(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    image = decode_file(buffer.getvalue(), fit=224)
    assert requests == [(REDUCING_GAP * 224, REDUCING_GAP * 224)]
    # 2000 // 448 = 4: the DCT decodes at 1/4 scale; never below REDUCING_GAP x the model's size
    assert image.mode == "RGB" and image.size == (750, 500)


def test_a_large_png_is_reduced_right_after_loading():
    from resnet_exp.data.images import REDUCING_GAP, decode_file, image_to_tensor

    buffer = io.BytesIO()
    source = big_image(4000, 3000)
    source.save(buffer, format="PNG")
    image = decode_file(buffer.getvalue(), fit=64)
    assert (
        image.mode == "RGB"
        and min(image.size) >= REDUCING_GAP * 64
        and max(image.size) < 4 * REDUCING_GAP * 64
    )
    # what the network sees is what resizing the full image gives, within rounding
    fitted, full = image_to_tensor(image, 64), image_to_tensor(source, 64)
    assert (fitted - full).abs().mean() < 0.02 and (fitted - full).abs().max() < 0.5


@pytest.mark.slow  # decodes a 40-megapixel PNG: seconds
def test_decoding_holds_at_most_one_full_size_image(tmp_path):
    """Resident memory of decoding four 16 MP PNGs one after another grows by about one image's
    RGB (48 MB), not four: each is shrunk before the next is touched."""
    import subprocess
    import sys

    path = tmp_path / "big.png"
    big_image(4000, 4000).save(path)
    script = (
        "import resource, sys\n"
        "from resnet_exp.data.images import decode_file\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "kept = [decode_file(data, 64) for _ in range(4)]\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(REPO_ROOT),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    growth = int(result.stdout.split()[-1])
    one_image = 4000 * 4000 * 3
    assert growth < 2 * one_image, (
        f"peak grew {growth / 1e6:.0f} MB for four {one_image / 1e6:.0f} MB images"
    )


def test_a_request_over_the_pixel_limit_is_refused_before_decoding():
    from resnet_exp.data.images import MAX_REQUEST_PIXELS, check_request_pixels

    check_request_pixels(MAX_REQUEST_PIXELS)
    with pytest.raises(
        ImageInputError, match=f"limit of {MAX_REQUEST_PIXELS:,} pixels per request"
    ):
        check_request_pixels(MAX_REQUEST_PIXELS + 1)
