"""Image input hardening (spacy_ita.context.images) and PIL images in serialised Docs."""
import io
import os

import numpy
import pytest
import spacy
from PIL import Image
from spacy.tokens import Doc, DocBin

import spacy_ita  # noqa: F401  (Doc extensions)
from spacy_ita.context import make_doc
from spacy_ita.context.images import (ImageError, decode_pil_image, load_image,
                                      read_image_source)

from image_builders import bad_images, encoded, png_header_only


def test_path_pathlib_bytes_and_pil_give_the_same_rgb_image(tmp_path):
    original = Image.new("RGB", (30, 20), (10, 200, 30))
    path = tmp_path / "green.png"
    original.save(path)
    for value in (str(path), path, path.read_bytes(), bytearray(path.read_bytes()), original):
        image = load_image(value)
        assert image.mode == "RGB" and image.size == (30, 20)
        assert image.getpixel((5, 5)) == (10, 200, 30)


def test_the_same_content_hashes_the_same_from_a_path_or_bytes(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(encoded(Image.new("RGB", (8, 8), "blue")))
    assert read_image_source(path).content_hash == read_image_source(path.read_bytes()).content_hash
    assert read_image_source(path).file_name == "x.png"


@pytest.mark.parametrize("kind, message", [
    ("missing", "does not exist"),
    ("directory", "is a directory"),
    ("empty", r"empty \(0 bytes\)"),
    ("svg", "not in a recognised image format"),
    ("truncated", "cannot be decoded"),
])
def test_unusable_images_raise_a_readable_error(tmp_path, kind, message):
    value = bad_images(tmp_path)[kind]
    with pytest.raises(ImageError, match=message) as info:
        load_image(value)
    assert os.path.basename(value) in str(info.value)


@pytest.mark.parametrize("value, message", [
    (b"", "empty"),
    (b"not an image at all", "not in a recognised image format"),
    ("https://example.com/cat.jpg", "URL"),
    (42, "unsupported image value"),
])
def test_other_bad_inputs(value, message):
    with pytest.raises(ImageError, match=message):
        load_image(value)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "L", "1", "I;16", "I", "F", "YCbCr"])
def test_every_mode_becomes_rgb(mode):
    image = Image.new("RGB", (16, 12), (200, 40, 40)).convert(mode)
    loaded = load_image(image)
    assert loaded.mode == "RGB" and loaded.size == (16, 12)


def test_transparency_is_composited_on_white():
    image = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    image.putpixel((5, 5), (0, 0, 255, 255))
    loaded = load_image(encoded(image))
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((5, 5)) == (0, 0, 255)
    palette = image.convert("P")
    assert load_image(encoded(palette)).getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_jpeg_and_16_bit_png_from_bytes():
    cmyk = Image.new("CMYK", (20, 20), (0, 255, 255, 0))  # red
    red, green, blue = load_image(encoded(cmyk, "JPEG", quality=95)).getpixel((10, 10))
    assert red > 200 and green < 60 and blue < 60
    deep = Image.fromarray(numpy.full((8, 8), 65535, dtype=numpy.uint16))
    assert deep.mode == "I;16"
    assert load_image(encoded(deep)).getpixel((0, 0)) == (255, 255, 255)


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (12, 12), colour) for colour in ("red", "blue", "green")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    red, green, blue = load_image(buffer.getvalue()).getpixel((6, 6))
    assert red > 200 and blue < 50


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), "white")
    image.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    loaded = load_image(encoded(image, "JPEG", exif=exif, quality=95))
    assert loaded.size == (20, 40)
    red, _, _ = loaded.getpixel((10, 5))  # the red half is now on top
    assert red > 200 and loaded.getpixel((10, 35))[1] > 200


def test_decompression_bombs_are_refused_before_decoding():
    with pytest.raises(ImageError, match="exceeds max_pixels=1000000"):
        load_image(png_header_only(2000, 2000), max_pixels=1_000_000)
    # Beyond Pillow's own hard limit the refusal holds whatever max_pixels says.
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(png_header_only(100_000, 100_000), max_pixels=10**12)


def test_oversized_images_are_downscaled():
    loaded = load_image(encoded(Image.new("RGB", (3000, 1000), "gray"), "JPEG"), max_side=500)
    assert loaded.size == (500, 167)
    assert load_image(Image.new("RGB", (3000, 1000)), max_side=None).size == (3000, 1000)


def test_the_callers_pil_image_is_not_modified():
    image = Image.new("RGBA", (3000, 100), (0, 0, 0, 0))
    load_image(image, max_side=300)
    assert image.size == (3000, 100) and image.mode == "RGBA"


def pil_pairs():
    """Pairs of PIL images with the same mode, size and pixel values that
    decode to different images: their content hashes must differ."""
    red, blue = Image.new("P", (8, 8), 0), Image.new("P", (8, 8), 0)
    red.putpalette([255, 0, 0] + [0] * 765)
    blue.putpalette([0, 0, 255] + [0] * 765)
    plain, clear = Image.new("L", (4, 4), 0), Image.new("L", (4, 4), 0)
    clear.info["transparency"] = 0
    upright, turned = (Image.open(io.BytesIO(encoded(Image.new("RGB", (40, 10)), "PNG",
                                                     exif=exif))) for exif in exifs(1, 6))
    return [(red, blue), (plain, clear), (upright, turned)]


def exifs(*orientations):
    for orientation in orientations:
        exif = Image.Exif()
        exif[0x0112] = orientation
        yield exif


@pytest.mark.parametrize("first, second", pil_pairs())
def test_pil_images_that_decode_differently_hash_differently(first, second):
    one, other = (load_image(image) for image in (first, second))
    assert (one.size, one.tobytes()) != (other.size, other.tobytes())
    assert read_image_source(first).content_hash != read_image_source(second).content_hash


def test_a_pil_image_is_read_at_the_frame_it_shows_and_stays_there():
    frames = [Image.new("RGB", (12, 12), colour) for colour in ("red", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    image = Image.open(buffer)
    image.seek(1)
    red, _, blue = load_image(image).getpixel((6, 6))
    assert blue > 200 and red < 50 and image.tell() == 1


def test_a_lazy_pil_image_is_refused_before_loading_or_failing_as_an_image_error():
    # Its header claims 4 million pixels it does not hold: loading would fail as truncated.
    claimed = Image.open(io.BytesIO(png_header_only(2000, 2000)))
    with pytest.raises(ImageError, match="exceeds max_pixels=1000000"):
        read_image_source(claimed, max_pixels=1_000_000)
    truncated = Image.open(io.BytesIO(encoded(Image.effect_noise((64, 64), 60), "PNG")[:-200]))
    with pytest.raises(ImageError, match="cannot read image .*truncated"):
        read_image_source(truncated)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "CMYK", "I;16"])
def test_a_pil_image_in_doc_survives_to_bytes_and_docbin(mode):
    nlp = spacy.blank("en")
    image = Image.new("RGB", (9, 7), (1, 2, 3)).convert(mode)
    doc = make_doc(nlp, "A post", image, image_id="17")
    copy = Doc(nlp.vocab).from_bytes(doc.to_bytes())
    assert copy._.image.mode == mode and copy._.image.size == (9, 7)
    assert numpy.array_equal(numpy.asarray(copy._.image), numpy.asarray(image))
    doc_bin = DocBin(store_user_data=True, docs=[doc])
    (restored,) = DocBin().from_bytes(doc_bin.to_bytes()).get_docs(nlp.vocab)
    assert restored._.image_id == "17" and restored._.image.size == (9, 7)


def test_an_undecoded_pil_image_record_is_still_readable():
    """A process that had not imported spacy_ita.context sees the raw msgpack dict."""
    from spacy_ita.context.images import encode_pil_image

    raw = encode_pil_image(Image.new("RGB", (5, 4), "red"))
    assert load_image(raw).size == (5, 4)
    assert decode_pil_image(raw).size == (5, 4)
