"""What the `serve` tests share besides fixtures (conftest.py): the API key
of the test server, and images as PNG bytes and data: URLs."""
import base64
import io

API_KEY_ENV = "SPACY_ITA_TEST_SERVE_KEY"
API_KEY = "test-key-7f3a9c"  # only ever in this test's environment


def png_bytes(colour, size=(24, 16)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def noise_png(size=(64, 64)) -> bytes:
    """A PNG of seeded random pixels: it does not compress, so its size is about 3 bytes a pixel."""
    import random

    from PIL import Image

    pixels = random.Random(0).randbytes(size[0] * size[1] * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", size, pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
