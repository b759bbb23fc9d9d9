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
