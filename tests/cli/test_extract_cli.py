"""`python -m spacy_ita extract`: folders, .spacy and JSONL inputs to .spacy with contexts."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import spacy  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data  # noqa: E402
from spacy.tokens import DocBin  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import spacy_ita.cli.extract  # noqa: E402,F401  (registers the command)
from spacy_ita.cli import app  # noqa: E402
from spacy_ita.context import make_doc  # noqa: E402

NO_MODELS = ["--ocr", "none", "--no-tags"]


def run(*args: str):
    result = CliRunner().invoke(app, ["extract", *map(str, args)])
    return result


def read_docs(path):
    nlp = spacy.blank("en")
    return list(DocBin().from_disk(path).get_docs(nlp.vocab))


def write_captions(path, names):
    path.write_text("".join(f"{name}.jpg :a photo called {name}\n" for name in names))
    return path


def test_a_folder_of_images_with_a_bad_one(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(data.chelsea()).save(folder / "1.jpg")
    Image.new("RGB", (32, 32), "blue").save(folder / "2.jpg")
    (folder / "3.jpg").write_text("<svg/>")
    (folder / "notes.txt").write_text("not an image")
    captions = write_captions(tmp_path / "captions.txt", ["1", "2", "3"])
    output = tmp_path / "out" / "contexts.spacy"
    result = run(folder, output, "--ocr", "none", "--precomputed", captions)
    assert result.exit_code == 0, result.output
    assert "Wrote 3 docs" in result.output
    assert "1 image(s) failed" in result.output and "not in a recognised image" in result.output
    docs = read_docs(output)
    assert [doc._.image_id for doc in docs] == ["1", "2", "3"]
    assert docs[0]._.visual_context.captions == ["a photo called 1"]
    assert any("cat" in tag for tag in docs[0]._.visual_context.object_tags)
    assert docs[2]._.image_error is not None
    assert docs[2]._.visual_context.captions == ["a photo called 3"]


def test_jsonl_records_with_relative_images_and_two_processes(tmp_path):
    """No pixel extractor here: forked workers must not inherit a used torch."""
    Image.new("RGB", (16, 16), "green").save(tmp_path / "ok.png")
    records = [{"text": "Fine post", "image": "ok.png"},
               {"text": "Gone post", "image": "gone.png"},
               {"text": "Text only"}]
    source = tmp_path / "posts.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    captions = write_captions(tmp_path / "captions.txt", ["ok", "gone"])
    output = tmp_path / "posts.spacy"
    result = run(source, output, *NO_MODELS, "--precomputed", captions,
                 "--n-process", "2", "--batch-size", "1")
    assert result.exit_code == 0, result.output
    docs = read_docs(output)
    assert [doc.text for doc in docs] == ["Fine post", "Gone post", "Text only"]
    assert docs[0]._.image == str(tmp_path / "ok.png")
    assert docs[1]._.visual_context.captions == ["a photo called gone"]
    assert docs[2]._.visual_context is None


def test_a_spacy_file_with_image_ids_merges_into_existing_contexts(tmp_path):
    from spacy_ita import VisualContext

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (16, 16), "red").save(images / "55.png")
    nlp = spacy.blank("en")
    doc = make_doc(nlp, "Post with an id", None, image_id="55")
    doc._.visual_context = VisualContext(captions=["from the corpus"])
    source = tmp_path / "train.spacy"
    DocBin(store_user_data=True, docs=[doc]).to_disk(source)
    jsonl = tmp_path / "extra.jsonl"
    jsonl.write_text(json.dumps({"image": "55.png", "object_tags": ["tag"]}) + "\n")
    output = tmp_path / "train_ctx.spacy"
    result = run(source, output, *NO_MODELS, "--image-dir", images, "--precomputed", jsonl,
                 "--cache", tmp_path / "cache.sqlite")
    assert result.exit_code == 0, result.output
    (out,) = read_docs(output)
    assert out._.image == str(images / "55.png")
    assert out._.visual_context == VisualContext(captions=["from the corpus"],
                                                 object_tags=["tag"])


def test_bad_input_is_a_clean_error(tmp_path):
    source = tmp_path / "posts.csv"
    source.write_text("text,image\n")
    result = run(source, tmp_path / "out.spacy", *NO_MODELS)
    assert result.exit_code == 1 and "expected a folder of images" in result.output


def test_jsonl_as_json_writes_it_bom_line_separators_and_numeric_ids(tmp_path):
    """A BOM, U+2028 inside a string (valid JSON, written by ensure_ascii=False)
    and a numeric image_id are read; an image_id of another type is refused
    naming the line."""
    source = tmp_path / "posts.jsonl"
    lines = [json.dumps({"text": "Line\u2028break in Paris", "image_id": 123},
                        ensure_ascii=False), json.dumps({"text": "Second"})]
    source.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode("utf-8") + b"\n")
    output = tmp_path / "posts.spacy"
    result = run(source, output, *NO_MODELS)
    assert result.exit_code == 0, result.output
    docs = read_docs(output)
    assert [doc.text for doc in docs] == ["Line\u2028break in Paris", "Second"]
    assert docs[0]._.image_id == "123"
    source.write_text(lines[1] + "\n" + json.dumps({"text": "x", "image_id": [1]}) + "\n")
    result = run(source, output, *NO_MODELS)
    assert result.exit_code == 1
    assert "posts.jsonl, line 2: 'image_id' must be a string, got [1]" in result.output


def test_jsonl_images_must_lie_inside_the_image_root(tmp_path):
    """As in apply: a record may not name a file outside the folder (an
    absolute path, '..', a symlink out); --image-root widens it."""
    posts, outside = tmp_path / "posts", tmp_path / "outside"
    posts.mkdir()
    outside.mkdir()
    for folder in (posts, outside):
        Image.new("RGB", (16, 16), "green").save(folder / "ok.png")
    (posts / "link.png").symlink_to(outside / "ok.png")
    records = [{"text": "inside", "image": "ok.png"},
               {"text": "absolute", "image": str(outside / "ok.png")},
               {"text": "dots", "image": "../outside/ok.png"},
               {"text": "symlink", "image": "link.png"}]
    source = posts / "posts.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    output = tmp_path / "out.spacy"
    assert run(source, output, *NO_MODELS).exit_code == 0
    docs = read_docs(output)
    assert docs[0]._.image == str(posts / "ok.png") and docs[0]._.image_error is None
    for doc in docs[1:]:
        assert doc._.image is None
        assert "is outside the image root" in doc._.image_error
    assert run(source, output, *NO_MODELS, "--image-root", tmp_path).exit_code == 0
    assert all(doc._.image_error is None for doc in read_docs(output))


def test_an_output_extract_must_not_replace_is_refused_before_any_work(tmp_path):
    """OUTPUT was never checked: the INPUT, the captions file or any other
    file was replaced by DocBin bytes, and a folder (or a path below a file)
    failed after all the work.
    Each is refused at once, naming it, and left as it was; a DocBin is replaced."""
    source = tmp_path / "posts.jsonl"
    source.write_text(json.dumps({"text": "A post"}) + "\n")
    captions = write_captions(tmp_path / "captions.txt", ["1"])
    notes = tmp_path / "notes.txt"
    notes.write_text("not a DocBin\n")
    cache = tmp_path / "cache.sqlite"
    (tmp_path / "folder.spacy").mkdir()
    refusals = {source: "is also INPUT", captions: "is also the --precomputed file",
                cache: "is also the --cache file", notes: "is not a .spacy file",
                tmp_path / "folder.spacy": "is a folder",
                notes / "sub" / "out.spacy": f"is below {notes}, which is a file"}
    before = {path: path.read_bytes() for path in (source, captions, notes)}
    for output, why in refusals.items():
        result = run(source, output, *NO_MODELS, "--precomputed", captions, "--cache", cache)
        assert result.exit_code == 1
        assert result.output.startswith(f"Error: OUTPUT {output} {why}")
        assert result.output.count("\n") == 1
    assert {path: path.read_bytes() for path in before} == before and not cache.exists()
    output = tmp_path / "out.spacy"
    for text in ("First", "Second"):
        source.write_text(json.dumps({"text": text}) + "\n")
        assert run(source, output, *NO_MODELS).exit_code == 0
        assert [doc.text for doc in read_docs(output)] == [text]


def test_a_malformed_context_in_a_spacy_input_costs_only_its_doc(tmp_path):
    """A context that is not a VisualContext or a dict of string lists stopped
    the run with a traceback and nothing written. It is now that doc's error,
    named by file and index; the others are written."""
    nlp = spacy.blank("en")
    captions = write_captions(tmp_path / "captions.txt", map(str, range(5)))
    docs = [make_doc(nlp, f"post {i}", None, image_id=str(i)) for i in range(5)]
    docs[0]._.visual_context = "a caption as plain text"
    docs[4]._.visual_context = {"captions": 5}
    source = tmp_path / "in.spacy"
    DocBin(store_user_data=True, docs=docs).to_disk(source)
    output = tmp_path / "out.spacy"
    result = run(source, output, *NO_MODELS, "--precomputed", captions, "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert "2 image(s) failed" in result.output
    assert f"  {source}, doc 0 (image_id '0'): Doc._.visual_context on doc " in result.output
    assert f"  {source}, doc 4 (image_id '4'): Invalid Doc._.visual_context" in result.output
    out = read_docs(output)
    assert [doc.text for doc in out] == [f"post {i}" for i in range(5)]
    assert [doc._.visual_context.captions for doc in out[1:4]] == [
        [f"a photo called {i}"] for i in (1, 2, 3)]
    for doc in (out[0], out[4]):
        assert doc._.visual_context is None and "visual_context" in doc._.image_error



def test_a_stored_visual_context_that_does_not_decode_is_its_doc_s_error(tmp_path):
    """A VisualContext made malformed before it was saved failed as DocBin
    decoded it, which ended the reading (a traceback, later one line and
    nothing written): now that doc's error, named by file and index, and the
    other docs written."""
    from spacy_ita import VisualContext

    nlp = spacy.blank("en")
    docs = [make_doc(nlp, f"post {i}", None) for i in range(3)]
    docs[1]._.visual_context = VisualContext(captions=["a"])
    docs[1]._.visual_context.captions.append(5)
    source = tmp_path / "in.spacy"
    DocBin(store_user_data=True, docs=docs).to_disk(source)
    result = run(source, tmp_path / "out.spacy", *NO_MODELS)
    assert result.exit_code == 0, result.output
    assert (f"1 image(s) failed:\n  {source}, doc 1: Invalid Doc._.visual_context on doc "
            "('post 1'): VisualContext.captions[1] must be a string, got int: 5") in result.output
    out = read_docs(tmp_path / "out.spacy")
    assert [doc.text for doc in out] == ["post 0", "post 1", "post 2"]
    assert out[0]._.image_error is None and out[2]._.image_error is None
    assert "captions[1] must be a string" in out[1]._.image_error


def test_a_dict_context_in_a_spacy_input_is_read(tmp_path):
    """A dict context (accepted by get_visual_context) made the summary fail
    on dict.is_empty, with nothing written, under keep and on docs without an image."""
    from spacy_ita import VisualContext

    doc = make_doc(spacy.blank("en"), "A post", None)
    doc._.visual_context = {"captions": ["a dog on a beach"]}
    source = tmp_path / "in.spacy"
    DocBin(store_user_data=True, docs=[doc]).to_disk(source)
    for existing in ("keep", "merge"):
        output = tmp_path / f"{existing}.spacy"
        result = run(source, output, *NO_MODELS, "--existing", existing)
        assert result.exit_code == 0, result.output
        assert "1 have a non-empty visual context" in result.output
        (out,) = read_docs(output)
        assert out._.visual_context == VisualContext(captions=["a dog on a beach"])


def test_failures_are_named_by_their_place_in_the_input_and_their_image_in_short(tmp_path):
    """A doc was named by str(Doc._.image): an image given as bytes printed
    megabytes on one line, and nothing said where the doc was."""
    nlp = spacy.blank("en")
    source = tmp_path / "in.spacy"
    DocBin(store_user_data=True, docs=[make_doc(nlp, "ok", None),
                                       make_doc(nlp, "bad", b"\x00garbage" * 100_000)]
           ).to_disk(source)
    result = run(source, tmp_path / "out.spacy", "--no-tags")  # an OCR reads the image
    assert result.exit_code == 0, result.output
    assert f"  {source}, doc 1 (<800000 bytes>): image <800000 bytes> is not" in result.output
    assert max(map(len, result.output.splitlines())) < 200
    jsonl = tmp_path / "posts.jsonl"
    jsonl.write_text(json.dumps({"text": "ok"}) + "\n\n" +
                     json.dumps({"text": "gone", "image": "gone.png"}) + "\n")
    result = run(jsonl, tmp_path / "out.spacy", "--no-tags")
    assert f"  {jsonl}, line 3 ('{tmp_path / 'gone.png'}'): image file" in result.output


def test_a_damaged_spacy_input_is_one_line_naming_it(tmp_path):
    nlp = spacy.blank("en")
    good = DocBin(docs=[nlp(f"post {i}") for i in range(50)]).to_bytes()
    source = tmp_path / "in.spacy"
    for data in (good[:len(good) // 2], b"hello, not a DocBin\n"):
        source.write_bytes(data)
        result = run(source, tmp_path / "out.spacy", *NO_MODELS)
        assert result.exit_code == 1
        assert result.output == (f"Error: {source} cannot be read: it is truncated or not "
                                 "a .spacy file\n")


def test_a_doc_whose_arrays_do_not_decode_is_one_line_naming_it(tmp_path):
    """extract caught fewer of DocBin's decode errors than the corpus reader: a
    KeyError from a doc's damaged arrays was a traceback."""
    import zlib

    import srsly

    nlp = spacy.blank("en")
    layout = srsly.msgpack_loads(zlib.decompress(
        DocBin(docs=[nlp(f"post {i}") for i in range(2)]).to_bytes()))
    layout["flags"] = {0: {}}  # doc 1's flags gone
    source = tmp_path / "in.spacy"
    source.write_bytes(zlib.compress(srsly.msgpack_dumps(layout)))
    result = run(source, tmp_path / "out.spacy", *NO_MODELS)
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.exc_info
    assert result.output.splitlines()[-1] == f"Error: {source}, doc 1: 1"


def test_sigterm_while_writing_the_output_leaves_no_temporary_file(tmp_path):
    """SIGTERM (a scheduler, `timeout`) killed extract inside its atomic write,
    leaving `.OUTPUT.tmp-<pid>` for good. It now ends the run through its
    clean-up, as apply does, with the signal's exit status."""
    import subprocess
    import sys

    source = tmp_path / "posts.jsonl"
    source.write_text(json.dumps({"text": "A post"}) + "\n")
    output = tmp_path / "out.spacy"
    script = ("import os, signal, sys\n"
              "fsync = os.fsync\n"
              "os.fsync = lambda fd: (os.kill(os.getpid(), signal.SIGTERM), fsync(fd))\n"
              "import spacy_ita.cli.extract\n"
              "from spacy_ita.cli import app\n"
              "app(['extract', *sys.argv[1:]])\n")
    result = subprocess.run([sys.executable, "-c", script, str(source), str(output),
                             *NO_MODELS], capture_output=True, text=True, timeout=300)
    assert result.returncode == 143, result.stderr[-2000:]
    assert list(tmp_path.iterdir()) == [source]
