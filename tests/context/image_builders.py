"""Images built on the fly for the ita_context tests (nothing is downloaded)."""
import io
import struct
import zlib
from pathlib import Path
from typing import Dict, Sequence

from PIL import Image, ImageDraw, ImageFont

DEJAVU_BOLD = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")


def font(size: int):
    """DejaVu Sans Bold (Debian fonts-dejavu-core) or Pillow's bundled font."""
    if DEJAVU_BOLD.exists():
        return ImageFont.truetype(str(DEJAVU_BOLD), size)
    return ImageFont.load_default(size=size)


def render_sign(lines: Sequence[str], size=(900, 320), text_size: int = 72) -> Image.Image:
    """Black text lines on white, large and clear."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((40, 40 + i * int(text_size * 1.6)), line, font=font(text_size), fill="black")
    return image


def encoded(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def bad_images(folder: Path) -> Dict[str, object]:
    """One value of Doc._.image per kind of unusable image, by name."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "drawing.jpg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    whole = encoded(Image.effect_noise((128, 128), 64).convert("RGB"))
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (folder / "a_directory.jpg").mkdir(exist_ok=True)
    return {
        "missing": str(folder / "missing.jpg"),
        "directory": str(folder / "a_directory.jpg"),
        "empty": str(folder / "empty.jpg"),
        "svg": str(folder / "drawing.jpg"),
        "truncated": str(folder / "truncated.png"),
    }
