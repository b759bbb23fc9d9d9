"""Image files for test_hostile_images.py and the bench, built on the fly.

`bad_image_cases` are inputs that must be refused (ImageError, then the
component's on_error policy); `good_image_cases` must decode to a usable RGB
image. Each case is a value for `Doc._.image` (a path, bytes or PIL image).
"""
import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

from PIL import Image


def encoded(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with almost no pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _chunk(b"IEND", b""))


def write_big_png(path: Path, width: int, height: int, rows_per_chunk: int = 256) -> int:
    """A complete, valid 8-bit greyscale PNG of width x height, streamed: the
    pixels never exist in memory (a 20,000 x 20,000 one compresses to ~0.4 MB).
    Returns the file size."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\x00" + bytes(width)  # filter byte + black pixels
    with open(path, "wb") as file_:
        file_.write(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header))
        done = 0
        while done < height:
            n = min(rows_per_chunk, height - done)
            data = compressor.compress(row * n)
            if data:
                file_.write(_chunk(b"IDAT", data))
            done += n
        file_.write(_chunk(b"IDAT", compressor.flush()) + _chunk(b"IEND", b""))
    return path.stat().st_size


def _exif_jpeg(orientation: int) -> bytes:
    image = Image.new("RGB", (40, 20), "white")
    image.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(image, "JPEG", exif=exif, quality=95)


def _corrupt_exif(how: str) -> bytes:
    data = bytearray(_exif_jpeg(6))
    start = data.find(b"Exif\x00\x00") + 6  # the TIFF header inside APP1
    if how == "offset":
        data[start + 4:start + 8] = b"\xff\xff\xff\x7f"  # first IFD far past the end
    elif how == "byte_order":
        data[start:start + 2] = b"XX"
    else:  # "entries": the IFD's entry count claims thousands of entries
        ifd = start + 8  # Pillow writes the first IFD right after the header
        data[ifd:ifd + 2] = b"\xff\xff"
    return bytes(data)


def _animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (12, 12), colour) for colour in ("red", "blue", "green")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:], duration=50)
    return buffer.getvalue()


def _palette_with_transparency() -> bytes:
    image = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    image.putpixel((5, 5), (255, 0, 0, 255))
    return encoded(image.convert("P"))


def _mode(mode: str, fmt: str = "PNG", **params) -> bytes:
    return encoded(Image.new("RGB", (16, 12), (200, 40, 40)).convert(mode), fmt, **params)


def _grey16(fmt: str) -> bytes:
    import numpy

    pixels = numpy.linspace(0, 65535, 20 * 10).astype(numpy.uint16).reshape(10, 20)
    image = Image.fromarray(pixels)
    assert image.mode == "I;16"
    return encoded(image, fmt)


# name -> (builder(folder) -> Doc._.image value, what the decoded image must be)
# The expectation is (size or None, dominant channel or None).
GoodCase = Tuple[Callable[[Path], Any], Tuple[Any, Any]]


def good_image_cases() -> Dict[str, GoodCase]:
    def file(name: str, data: Callable[[], bytes]):
        def build(folder: Path):
            path = folder / name
            path.write_bytes(data())
            return str(path)
        return build

    return {
        "rgba_png": (file("rgba.png", lambda: _mode("RGBA")), ((16, 12), "red")),
        "la_png": (file("la.png", lambda: _mode("LA")), ((16, 12), None)),
        "palette_transparent_png": (file("p.png", _palette_with_transparency), ((10, 10), None)),
        "cmyk_jpeg": (file("cmyk.jpg", lambda: _mode("CMYK", "JPEG", quality=95)),
                      ((16, 12), "red")),
        "grey_l_png": (file("l.png", lambda: _mode("L")), ((16, 12), None)),
        "bilevel_1_png": (file("one.png", lambda: _mode("1")), ((16, 12), None)),
        "grey16_png": (file("g16.png", lambda: _grey16("PNG")), ((20, 10), None)),
        "grey16_tiff": (file("g16.tif", lambda: _grey16("TIFF")), ((20, 10), None)),
        "int32_tiff": (file("i32.tif", lambda: _mode("I", "TIFF")), ((16, 12), None)),
        "float_tiff": (file("f.tif", lambda: _mode("F", "TIFF")), ((16, 12), None)),
        "ycbcr_jpeg": (file("ycc.jpg", lambda: _mode("RGB", "JPEG")), ((16, 12), "red")),
        "progressive_jpeg": (file("prog.jpg", lambda: _mode("RGB", "JPEG", progressive=True)),
                             ((16, 12), "red")),
        "webp": (file("x.webp", lambda: _mode("RGB", "WEBP")), ((16, 12), "red")),
        "bmp": (file("x.bmp", lambda: _mode("RGB", "BMP")), ((16, 12), "red")),
        "animated_gif_first_frame": (file("anim.gif", lambda: _animated("GIF")),
                                     ((12, 12), "red")),
        "animated_png_first_frame": (file("anim.png", lambda: _animated("PNG")),
                                     ((12, 12), "red")),
        "exif_orientation_6": (file("rot.jpg", lambda: _exif_jpeg(6)), ((20, 40), None)),
        "exif_orientation_out_of_range": (file("rot99.jpg", lambda: _exif_jpeg(99)),
                                          ((40, 20), None)),
        "corrupt_exif_offset": (file("badexif1.jpg", lambda: _corrupt_exif("offset")),
                                (None, None)),
        "corrupt_exif_byte_order": (file("badexif2.jpg", lambda: _corrupt_exif("byte_order")),
                                    (None, None)),
        "corrupt_exif_entry_count": (file("badexif3.jpg", lambda: _corrupt_exif("entries")),
                                     (None, None)),
        "one_by_one": (file("1x1.png", lambda: encoded(Image.new("RGB", (1, 1), "red"))),
                       ((1, 1), "red")),
        "oversized_3000x1000_jpeg": (file("big.jpg", lambda: encoded(
            Image.new("RGB", (3000, 1000), (20, 200, 20)), "JPEG")), ((1600, 533), "green")),
        "oversized_4000x3000_png": (file("big.png", lambda: encoded(
            Image.new("RGB", (4000, 3000), (20, 20, 200)))), ((1600, 1200), "blue")),
        "thin_strip_3x5000": (lambda folder: strip_image((3, 5000)), ((1, 1600), None)),
        "pil_image_rgba": (lambda folder: Image.new("RGBA", (8, 6), (0, 0, 255, 255)),
                           ((8, 6), "blue")),
        "raw_bytes_png": (lambda folder: encoded(Image.new("RGB", (8, 6), "red")),
                          ((8, 6), "red")),
        "uppercase_extension_no_extension": (file("NOEXT", lambda: _mode("RGB", "PNG")),
                                             ((16, 12), "red")),
    }


# Thin strips: valid images whose downscaling must keep at least one pixel a side.
STRIP_CASES = {
    "strip_1x20000": ((1, 20000), (1, 1600)),
    "strip_20000x1": ((20000, 1), (1600, 1)),
}


def strip_image(size) -> bytes:
    return encoded(Image.new("L", size, 128))


def bad_image_cases(folder: Path) -> Dict[str, Tuple[Any, str]]:
    """name -> (Doc._.image value, regex the ImageError message must match)."""
    folder.mkdir(parents=True, exist_ok=True)
    whole_png = encoded(Image.effect_noise((128, 128), 64).convert("RGB"))
    whole_jpeg = encoded(Image.effect_noise((128, 128), 64).convert("RGB"), "JPEG")
    files = {
        "empty.jpg": b"",
        "text.jpg": b"this is not an image\n" * 10,
        "drawing.jpg": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" '
                       b'width="10" height="10"><rect width="10" height="10"/></svg>',
        "document.jpg": b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n"
                        b"%%EOF\n",
        "error_page.jpg": b"<html><body><h1>404 Not Found</h1></body></html>",
        "truncated.png": whole_png[: len(whole_png) // 2],
        "truncated.jpg": whole_jpeg[: len(whole_jpeg) // 2],
        "header_only.png": whole_png[:40],
        "bomb.png": png_header_only(100_000, 100_000),
        "over_max_pixels.png": png_header_only(8_000, 8_000),  # 64M > 50M default
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "a_directory.jpg").mkdir(exist_ok=True)
    loop_a, loop_b = folder / "loop_a.jpg", folder / "loop_b.jpg"
    for link, target in ((loop_a, loop_b), (loop_b, loop_a)):
        if not os.path.islink(link):
            os.symlink(target, link)
    dangling = folder / "dangling.jpg"
    if not os.path.islink(dangling):
        os.symlink(folder / "nowhere.jpg", dangling)
    path = lambda name: str(folder / name)  # noqa: E731
    return {
        "missing_file": (path("missing.jpg"), "does not exist"),
        "zero_byte_file": (path("empty.jpg"), "empty"),
        "text_bytes_as_jpg": (path("text.jpg"), "not in a recognised image format"),
        "svg_named_jpg": (path("drawing.jpg"), "not in a recognised image format"),
        "pdf_named_jpg": (path("document.jpg"), "not in a recognised image format"),
        "html_named_jpg": (path("error_page.jpg"), "not in a recognised image format"),
        "truncated_png": (path("truncated.png"), "cannot be decoded"),
        "truncated_jpeg": (path("truncated.jpg"), "cannot be decoded"),
        "png_header_only": (path("header_only.png"), "cannot be decoded|not in a recognised"),
        "decompression_bomb": (path("bomb.png"), "decompression bomb"),
        "over_max_pixels": (path("over_max_pixels.png"), "max_pixels"),
        "directory": (path("a_directory.jpg"), "is a directory"),
        "symlink_loop": (path("loop_a.jpg"), "does not exist|symbolic link|loop"),
        "dangling_symlink": (path("dangling.jpg"), "does not exist"),
        "non_image_bytes": (b"\x00\x01\x02garbage" * 10, "not in a recognised image format"),
        "empty_bytes": (b"", "empty"),
        "url": ("https://example.com/cat.jpg", "URL"),
        "wrong_type_int": (42, "unsupported image value"),
        "wrong_type_dict": ({"path": "x.jpg"}, "unsupported image value"),
    }
