"""Issue 6, point 3: hostile images, through the image loader and through the
ita_context component (with a cheap pixel extractor) under each on_error policy.

Documented behaviour: a bad image gives its doc an empty VisualContext and a
readable `Doc._.image_error`; on_error="warn" (default) also warns,
"raise" raises ImageError, "ignore" is silent. A good image of any kind
decodes to a usable RGB picture and gets a context.
"""
import os
import re
import stat
import subprocess
import sys
import threading
import warnings

import pytest
from PIL import Image, ImageStat

from hostile_images import (STRIP_CASES, bad_image_cases, good_image_cases, strip_image,
                            write_big_png)
from mixed_batches import EXTRACTOR_CALLS, context_nlp
from spacy_ita import VisualContext
from spacy_ita.context import make_doc
from spacy_ita.context.images import DEFAULT_MAX_SIDE, ImageError, load_image

POLICIES = ["warn", "raise", "ignore"]
GOOD = good_image_cases()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("robust_images")


@pytest.fixture(scope="module")
def bad(folder):
    return bad_image_cases(folder / "bad")


@pytest.fixture(scope="module")
def pipelines():
    return {policy: context_nlp(on_error=policy) for policy in POLICIES}


def ita_context_warnings(caught):
    return [str(w.message) for w in caught if "ita_context" in str(w.message)]


def run_doc(nlp, image, text="a post"):
    doc = make_doc(nlp, text, image, image_id="img-7")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nlp(doc)
    return doc, ita_context_warnings(caught)


BAD_NAMES = sorted([
    "missing_file", "zero_byte_file", "text_bytes_as_jpg", "svg_named_jpg", "pdf_named_jpg",
    "html_named_jpg", "truncated_png", "truncated_jpeg", "png_header_only",
    "decompression_bomb", "over_max_pixels", "directory", "symlink_loop", "dangling_symlink",
    "non_image_bytes", "empty_bytes", "url", "wrong_type_int", "wrong_type_dict"])


def test_the_bad_case_list_is_complete(bad):
    assert sorted(bad) == BAD_NAMES


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_image_loader_error(bad, name):
    value, pattern = bad[name]
    with pytest.raises(ImageError) as excinfo:
        load_image(value)
    assert re.search(pattern, str(excinfo.value)), str(excinfo.value)
    if isinstance(value, str) and not value.startswith("http"):
        assert os.path.basename(value) in str(excinfo.value)  # names the file


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_image_on_error_policy(bad, pipelines, name, policy):
    value, pattern = bad[name]
    nlp = pipelines[policy]
    if policy == "raise":
        with pytest.raises(ImageError) as excinfo:
            run_doc(nlp, value)
        assert re.search(pattern, str(excinfo.value))
        assert "a post" in str(excinfo.value) and "img-7" in str(excinfo.value)
        return
    doc, messages = run_doc(nlp, value)
    assert doc.text == "a post"
    assert doc._.visual_context == VisualContext()
    assert re.search(pattern, doc._.image_error), doc._.image_error
    if policy == "warn":
        assert len(messages) == 1 and re.search(pattern, messages[0])
        assert "img-7" in messages[0]
    else:
        assert messages == []


def check_decoded(image, expected_size, colour):
    assert image.mode == "RGB"
    assert image.width >= 1 and image.height >= 1
    assert max(image.size) <= DEFAULT_MAX_SIDE
    if expected_size is not None:
        assert image.size == expected_size
    if colour is not None:
        means = ImageStat.Stat(image).mean
        assert ("red", "green", "blue")[means.index(max(means))] == colour


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_image_decodes_to_usable_rgb(folder, name):
    build, (size, colour) = GOOD[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about corrupt EXIF; fine
        image = load_image(build(folder))
    check_decoded(image, size, colour)
    if name.startswith("corrupt_exif"):
        assert image.size in ((40, 20), (20, 40))


def test_sixteen_bit_grey_keeps_its_range(folder):
    for name in ("grey16_png", "grey16_tiff"):
        image = load_image(GOOD[name][0](folder))
        low, high = image.convert("L").getextrema()
        assert (low, high) == (0, 255), name


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_image_gets_a_context_under_every_policy(folder, pipelines, name, policy):
    build, (size, colour) = GOOD[name]
    doc, messages = run_doc(pipelines[policy], build(folder))
    assert doc._.image_error is None and messages == []
    tags = doc._.visual_context.object_tags
    assert len(tags) == 2 and tags[0] in ("square", "wide", "tall")
    if colour is not None:
        assert tags[1] == colour


@pytest.mark.parametrize("name", sorted(STRIP_CASES))
def test_thin_strips_keep_at_least_one_pixel(name, pipelines):
    size, expected = STRIP_CASES[name]
    image = load_image(strip_image(size))
    assert image.size == expected
    doc, messages = run_doc(pipelines["warn"], strip_image(size))
    assert doc._.image_error is None and messages == []


def test_unreadable_file(folder, pipelines):
    path = folder / "unreadable.png"
    Image.new("RGB", (4, 4), "red").save(path)
    os.chmod(path, 0)
    try:
        try:
            with open(path, "rb"):
                pass
        except PermissionError:
            pass
        else:
            pytest.skip("running as root: chmod 000 does not stop reads")
        with pytest.raises(ImageError, match="cannot read image file"):
            load_image(str(path))
        doc, messages = run_doc(pipelines["warn"], str(path))
        assert "cannot read" in doc._.image_error and len(messages) == 1
    finally:
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)


def test_fifo_is_refused_not_read(folder):
    fifo = folder / "pipe.jpg"
    if not fifo.exists():
        os.mkfifo(fifo)
    outcome = {}

    def load():
        try:
            load_image(str(fifo))
            outcome["result"] = "loaded"
        except ImageError as err:
            outcome["result"] = str(err)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(3)
    hung = thread.is_alive()
    if hung:  # release the blocked open() with a writer that closes at once
        descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(descriptor)
        thread.join(5)
    assert not hung, "load_image blocked on a FIFO"
    assert "not a regular file" in outcome["result"]


def test_huge_file_is_refused_from_its_size_unread(folder):
    """A 3 GiB file named .jpg (sparse: no disk used) must not be read into memory."""
    import resource

    path = folder / "video.jpg"
    with open(path, "wb") as file:
        file.truncate(3 * 2**30)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageError, match=r"3072\.0 MiB, over the limit of 64\.0 MiB"):
        load_image(str(path))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB
    doc, messages = run_doc(context_nlp(on_error="warn"), str(path))
    assert "over the limit" in doc._.image_error and len(messages) == 1


def test_max_bytes_applies_to_paths_and_bytes(folder):
    path = folder / "small.png"
    Image.new("RGB", (64, 64), "red").save(path)
    size = path.stat().st_size
    nlp = context_nlp(on_error="ignore", max_bytes=size - 1)
    for image in (str(path), path.read_bytes()):
        doc, _ = run_doc(nlp, image)
        assert "over the limit" in doc._.image_error
        assert doc._.visual_context.is_empty()
    doc, _ = run_doc(context_nlp(on_error="ignore", max_bytes=size), str(path))
    assert doc._.image_error is None and not doc._.visual_context.is_empty()


def test_mixed_batch_keeps_order_and_costs_only_the_bad_docs(folder, bad):
    """Every bad case and every good case in one stream, batched by 4."""
    nlp = context_nlp(on_error="ignore", batch_size=4)
    values = []
    for i, name in enumerate(sorted(GOOD)):
        values.append((f"good {name}", GOOD[name][0](folder)))
        bad_name = BAD_NAMES[i % len(BAD_NAMES)]
        values.append((f"bad {bad_name}", bad[bad_name][0]))
    docs = [make_doc(nlp, text, image) for text, image in values]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = list(nlp.pipe(docs, batch_size=64))
    assert [doc.text for doc in out] == [text for text, _ in values]
    for doc in out:
        if doc.text.startswith("good"):
            assert doc._.image_error is None and len(doc._.visual_context.object_tags) == 2
        else:
            assert doc._.image_error and doc._.visual_context.is_empty()


def test_bad_images_never_reach_the_extractor(bad, pipelines):
    EXTRACTOR_CALLS.clear()
    for name in BAD_NAMES:
        run_doc(pipelines["ignore"], bad[name][0])
    assert EXTRACTOR_CALLS["images"] == 0


# Peak RSS from /proc (VmHWM): getrusage's ru_maxrss survives exec on Linux,
# so a child of a big process would report its parent's peak.
PEAK_RSS_SCRIPT = """
import json, sys
from spacy_ita.context.images import ImageError, load_image
def peak_mb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
before = peak_mb()
try:
    image = load_image(sys.argv[1], max_pixels=int(sys.argv[2]))
    result = {"size": list(image.size)}
except ImageError as err:
    result = {"error": str(err)}
result["peak_rss_mb"] = peak_mb()
result["baseline_rss_mb"] = before
print(json.dumps(result))
"""


def load_in_subprocess(path, max_pixels):
    import json

    result = subprocess.run([sys.executable, "-c", PEAK_RSS_SCRIPT, str(path), str(max_pixels)],
                            capture_output=True, text=True, timeout=300, check=False,
                            cwd=path.parent)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("max_pixels", [50_000_000, 10**12])
def test_a_real_20000_by_20000_png_is_refused_in_bounded_memory(tmp_path, max_pixels):
    path = tmp_path / "huge.png"
    write_big_png(path, 20_000, 20_000)
    result = load_in_subprocess(path, max_pixels)
    assert "decompression bomb" in result["error"]
    # Refused from the header: no pixel buffer (400 MB as greyscale) is allocated.
    assert result["peak_rss_mb"] - result["baseline_rss_mb"] < 100, result
    nlp = context_nlp(on_error="ignore")
    doc, _ = run_doc(nlp, str(path))
    assert "decompression bomb" in doc._.image_error


@pytest.mark.slow
def test_largest_allowed_image_decodes_in_bounded_memory(tmp_path):
    """7,000 x 7,000 (49M pixels, under max_pixels) greyscale PNG: decoded in
    full, then downscaled; peak memory stays near width x height x 4 bytes."""
    path = tmp_path / "large.png"
    write_big_png(path, 7_000, 7_000)
    result = load_in_subprocess(path, 50_000_000)
    assert result["size"] == [1600, 1600]
    assert result["peak_rss_mb"] < 1024, result
