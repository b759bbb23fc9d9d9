"""Image input hardening shared by every extractor.

`Doc._.image` may be a path, raw bytes or a PIL image. `read_image_source`
reads it and hashes its content (the cache key) without decoding pixels;
`decode_image` then turns it into one safe RGB picture: EXIF orientation
applied, any mode converted to RGB, first frame of an animation, decompression
bombs refused and oversized images downscaled. Every failure is an
`ImageError` with a readable message.

Pillow is imported inside functions, so that importing `spacy_ita` (which
registers the msgpack hooks below) does not need the optional `vision` extra.
"""
import hashlib
import io
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_SIDE = 1600
# Larger than any photo a post carries; a video or disk image named .jpg is
# refused before it is read into memory.
DEFAULT_MAX_BYTES = 64 * 2**20
_MSGPACK_KEY = "__spacy_ita_pil_image__"
_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
EXIF_ORIENTATION = 0x0112  # the EXIF tag exif_transpose turns the image by


class ImageError(ValueError):
    """An image that cannot be used: missing, unreadable, refused or unsupported."""


@dataclass
class ImageSource:
    """An image read from its input but not decoded yet: raw bytes or a PIL image."""

    description: str
    content_hash: str
    data: Optional[bytes] = None
    pil_image: Any = None
    file_name: Optional[str] = None


def describe_image(image: Any) -> str:
    """A short human-readable name for an image input, for error messages."""
    if isinstance(image, (str, os.PathLike)):
        return repr(os.fspath(image))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return f"<{len(image)} bytes>"
    if _is_pil_image(image):
        return f"<PIL image {image.width}x{image.height} {image.mode}>"
    return f"<{type(image).__name__}>"


def read_image_source(image: Any, max_bytes: int = DEFAULT_MAX_BYTES,
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageSource:
    """Read a path, bytes or PIL image and hash its content, without decoding
    a file or bytes. Files and byte strings over `max_bytes` are refused
    unread, a PIL image over `max_pixels` before its pixels are loaded."""
    if isinstance(image, dict) and _MSGPACK_KEY in image:
        # Deserialised by a process that had not registered decode_pil_image: PNG bytes.
        image = image[_MSGPACK_KEY]
    description = describe_image(image)
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if path.startswith(("http://", "https://")):
            raise ImageError(f"image {description} is a URL; download it first")
        if not os.path.exists(path):
            raise ImageError(f"image file {description} does not exist")
        if os.path.isdir(path):
            raise ImageError(f"image path {description} is a directory, not a file")
        if not os.path.isfile(path):
            # A FIFO would block open() forever; /dev/zero would read without end.
            raise ImageError(f"image path {description} is not a regular file "
                             "(a FIFO, device or socket)")
        try:
            _check_bytes(os.path.getsize(path), max_bytes, f"image file {description}")
            with open(path, "rb") as file:
                # One byte more than allowed: a file that grew since stat is caught too.
                data = file.read(max_bytes + 1)
        except OSError as err:
            raise ImageError(f"cannot read image file {description}: {err}") from None
        if not data:
            raise ImageError(f"image file {description} is empty (0 bytes)")
        _check_bytes(len(data), max_bytes, f"image file {description}")
        return ImageSource(description, _hash_bytes(data), data=data,
                           file_name=os.path.basename(path))
    if isinstance(image, (bytes, bytearray, memoryview)):
        _check_bytes(memoryview(image).nbytes, max_bytes, "image bytes")
        data = bytes(image)
        if not data:
            raise ImageError("image bytes are empty")
        return ImageSource(description, _hash_bytes(data), data=data)
    if _is_pil_image(image):
        _check_pixels(image, max_pixels, description)
        return ImageSource(description, _hash_pil_image(image, description), pil_image=image)
    raise ImageError(
        f"unsupported image value {description}: expected a path, bytes or a PIL image"
    )


def _check_bytes(size: int, max_bytes: int, what: str) -> None:
    if size > max_bytes:
        raise ImageError(f"{what} is {_size(size)}, over the limit of {_size(max_bytes)} (max_bytes)")


def _size(n_bytes: int) -> str:
    return f"{n_bytes:,} bytes" if n_bytes < 2**20 else f"{n_bytes / 2**20:.1f} MiB"


def decode_image(
    source: ImageSource,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: Optional[int] = DEFAULT_MAX_SIDE,
):
    """Decode an ImageSource into an RGB PIL image that is safe to hand to a model."""
    from PIL import Image, ImageOps

    try:
        if source.pil_image is not None:
            image = source.pil_image
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(source.data))
        _check_pixels(image, max_pixels, source.description)
        if source.pil_image is None and getattr(image, "n_frames", 1) > 1:
            image.seek(0)  # a caller's PIL image is read at the frame it shows (as hashed)
        if max_side and image.format == "JPEG":
            image.draft(None, (max_side, max_side))
        image.load()
        image = ImageOps.exif_transpose(image)
        image = to_rgb(image)
        if max_side and max(image.size) > max_side:
            # Not ImageOps.contain: it rounds the short side of a thin strip to 0.
            scale = max_side / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.LANCZOS)
        return image
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"image {source.description} refused: too many pixels "
                         "(possible decompression bomb)") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"image {source.description} is not in a recognised image "
                         "format") from None
    except Exception as err:  # Pillow's plugins raise many types on corrupt data
        raise ImageError(f"image {source.description} cannot be decoded "
                         f"(truncated or corrupt?): {err}") from None


def load_image(
    image: Any,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: Optional[int] = DEFAULT_MAX_SIDE,
):
    """Read and decode a path, bytes or PIL image into a safe RGB PIL image."""
    return decode_image(read_image_source(image, max_pixels=max_pixels), max_pixels=max_pixels,
                        max_side=max_side)


def to_rgb(image):
    """Convert any PIL mode to RGB; transparency is composited onto white."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        return _high_bit_depth_to_rgb(image)
    if image.mode == "P" or (image.mode in ("L", "RGB") and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _high_bit_depth_to_rgb(image):
    """Scale 16-bit, 32-bit integer or float pixels to 8-bit grey, then RGB."""
    import numpy
    from PIL import Image

    pixels = numpy.asarray(image, dtype=numpy.float64)
    if image.mode.startswith("I;16"):
        pixels = pixels / 257.0
    else:
        low, high = float(pixels.min()), float(pixels.max())
        pixels = (pixels - low) * (255.0 / (high - low)) if high > low else pixels * 0
    grey = numpy.clip(numpy.rint(pixels), 0, 255).astype(numpy.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _check_pixels(image, max_pixels: int, description: str) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"image {description} refused: {width}x{height} = {width * height} pixels "
            f"exceeds max_pixels={max_pixels} (possible decompression bomb)"
        )


def _hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hash_pil_image(image: Any, description: str) -> str:
    """A hash of all that decoding reads from a PIL image: its frame as shown,
    mode, size, palette, transparency and EXIF orientation (a red and a blue
    palette over the same pixels are different images). Loading a lazily
    opened image may fail (a truncated file): an ImageError of its post."""
    try:
        pixels = image.tobytes()
        palette = image.palette.tobytes() if image.palette is not None else b""
        orientation = image.getexif().get(EXIF_ORIENTATION)
    except Exception as err:  # Pillow raises OSError, ValueError, SyntaxError...
        raise ImageError(f"cannot read image {description}: {type(err).__name__}: "
                         f"{err}") from None
    header = (f"{image.mode}:{image.size}:{image.info.get('transparency')!r}:"
              f"{orientation}:{len(palette)}:")
    digest = hashlib.sha256(header.encode())
    digest.update(palette)
    digest.update(pixels)
    return digest.hexdigest()


def _is_pil_image(obj: Any) -> bool:
    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(obj, pil.Image)


def encode_pil_image(obj: Any, chain: Optional[Callable] = None) -> Any:
    """srsly msgpack encoder hook: a PIL image becomes PNG bytes (TIFF for modes PNG lacks)."""
    if not _is_pil_image(obj):
        return obj if chain is None else chain(obj)
    buffer = io.BytesIO()
    exif = obj.getexif()
    try:
        obj.save(buffer, format="PNG", exif=exif) if exif else obj.save(buffer, format="PNG")
    except OSError:
        buffer = io.BytesIO()
        obj.save(buffer, format="TIFF")
    return {_MSGPACK_KEY: buffer.getvalue()}


def decode_pil_image(obj: Any, chain: Optional[Callable] = None) -> Any:
    """srsly msgpack decoder hook, the inverse of `encode_pil_image`."""
    if isinstance(obj, dict) and _MSGPACK_KEY in obj:
        from PIL import Image

        image = Image.open(io.BytesIO(obj[_MSGPACK_KEY]))
        image.load()
        return image
    return obj if chain is None else chain(obj)

