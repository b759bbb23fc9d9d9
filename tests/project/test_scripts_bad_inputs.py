"""The project scripts on broken or hostile inputs: a truncated .spacy, a zip
that is not one, a metrics file of the wrong shape each stop the script with
one message naming the file; labels from a corpus are shown as text in the
error report."""
import base64
import io
import zipfile

import pytest
import spacy
import srsly
from spacy.tokens import Doc, DocBin, Span

import ablation_table
import augment_knowledge
import error_report
import pgim_knowledge
import try_package

HOSTILE = "<img/src=x/onerror=alert(1)>"


def gold_bytes() -> bytes:
    """A .spacy file's bytes: one post with one entity."""
    doc = Doc(spacy.blank("en").vocab, words=["Serena", "won"])
    doc.ents = [Span(doc, 0, 1, "PER")]
    return DocBin(docs=[doc], store_user_data=True).to_bytes()


def fails_naming(capsys, run, *names: str) -> None:
    """`run()` exits with 1 and prints one message naming each of `names`."""
    with pytest.raises(SystemExit) as exited:
        run()
    assert exited.value.code == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "Traceback" not in out
    for name in names:
        assert name in out, out


def test_report_shows_labels_kb_ids_and_titles_as_text():
    vocab = spacy.blank("en").vocab
    gold = Doc(vocab, words=["<script>x</script>", "won"])
    gold.ents = [Span(gold, 0, 1, HOSTILE, kb_id="<b>kb</b>")]
    gold.user_data["title"] = "<svg/onload=alert(2)>"
    predicted = Doc(vocab, words=["<script>x</script>", "won"])
    predicted.ents = [Span(predicted, 0, 1, "PER")]
    page = error_report.report_html("title", [(gold, predicted)])
    assert "<img" not in page and "<script" not in page and "<svg" not in page
    assert "<b>kb" not in page
    # The escaped label keeps its own colour from the report's palette.
    mark = page[page.index("<mark"):page.index("</mark>")]
    assert "background: #7aecec" in mark and "&lt;img/src=x/onerror=alert(1)&gt;</span>" in mark


def test_report_inlines_only_images_and_shrinks_them(tmp_path):
    """A post's image path from a corpus made elsewhere may name any file: only
    a file that decodes as an image goes into the page, shrunk."""
    from PIL import Image

    secret = tmp_path / "secret.png"
    secret.write_text("password=hunter2\n")
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (1600, 800), "red").save(photo)
    vocab = spacy.blank("en").vocab
    pages = []
    for image in (secret, photo):
        doc = Doc(vocab, words=["Serena", "won"])
        doc._.image = str(image)
        pages.append(error_report.report_html("title", [(doc, doc)]))
    leaked = base64.b64encode(secret.read_bytes()).decode("ascii")
    assert leaked[:16] not in pages[0] and "secret.png<br>(file not available)" in pages[0]
    data = pages[1].split("data:image/png;base64,")[1].split('"')[0]
    assert Image.open(io.BytesIO(base64.b64decode(data))).size == (
        error_report.REPORT_IMAGE_SIDE, error_report.REPORT_IMAGE_SIDE // 2)


def test_a_truncated_corpus_stops_augment_before_anything_is_written(tmp_path, capsys):
    released = tmp_path / "released"
    released.mkdir()
    (released / "train.spacy").write_bytes(gold_bytes()[:20])
    for split in ("dev", "test"):
        (released / f"{split}.spacy").write_bytes(gold_bytes())
    output = tmp_path / "corpus"
    for knowledge in ("augmented", "released"):
        fails_naming(capsys, lambda: augment_knowledge.main(released, output, knowledge, 0),
                     str(released / "train.spacy"), "truncated")
        assert not output.exists()


def test_a_truncated_corpus_stops_the_report_and_try_package(tmp_path, capsys):
    truncated = tmp_path / "dev.spacy"
    truncated.write_bytes(gold_bytes()[:20])
    model = tmp_path / "model"
    spacy.blank("en").to_disk(model)
    fails_naming(capsys, lambda: error_report.main(str(model), truncated, tmp_path / "r.html",
                                                   8, "auto"), str(truncated), "truncated")
    assert not (tmp_path / "r.html").exists()
    wheel = tmp_path / "en_x-0.1.0-py3-none-any.whl"
    wheel.touch()
    fails_naming(capsys, lambda: try_package.main(wheel, truncated, 0, None),
                 str(truncated), "truncated")


def bad_crc_zip(path):
    """PGIM's layout with one byte of a stored member changed."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for split in pgim_knowledge.SPLITS:
            archive.writestr(f"2015/{split}.txt", "Serena\tB-PER\n<EOS>\tX\nplayer\tX\n\n")
    data = bytearray(path.read_bytes())
    data[data.index(b"Serena")] = ord("Z")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("write, reason", [
    (lambda path: path.write_text("<html>rate limited</html>"), "File is not a zip file"),
    (bad_crc_zip, "Bad CRC-32 for file '2015/train.txt'"),
    (lambda path: path.mkdir(), "it is not a file"),
])
def test_a_broken_pgim_zip_is_named(tmp_path, capsys, write, reason):
    umt = tmp_path / "umt"
    umt.mkdir()
    for split in pgim_knowledge.SPLITS:
        (umt / f"{split}.txt").write_text("IMGID:1\nSerena\tB-PER\n\n")
    archive = tmp_path / "pgim.zip"
    write(archive)
    output = tmp_path / "pgim_knowledge.txt"
    fails_naming(capsys, lambda: pgim_knowledge.main(archive, umt, output),
                 f"{archive} cannot be read as a zip: {reason}")
    assert not output.exists()


@pytest.mark.parametrize("text, reason", [
    ('{"views": {"cross": ', "invalid JSON"),
    ('[1, 2]', "no 'views' object"),
    ('{"views": {"cross": [1, 2]}}', "views.cross is not an object"),
    ('{"views": {"text": {"ents_per_type": [1]}}}', "views.text.ents_per_type is not an object"),
    ('{"views": {"cross": {"ents_p": "high"}}}', "views.cross has a score that is not a number"),
    ('{"views": {"cross": {"ents_per_type": {"PER": {"f": "x"}}}}}',
     "views.cross has a score that is not a number"),
])
def test_a_metrics_file_cut_short_or_of_another_shape_is_named(tmp_path, capsys, text, reason):
    good, bad = tmp_path / "ita.json", tmp_path / "broken.json"
    srsly.write_json(good, {"views": {"cross": {"ents_p": 0.5, "ents_per_type": None}}})
    bad.write_text(text)
    fails_naming(capsys, lambda: ablation_table.main([good, bad], None),
                 f"{bad} is not a metrics file", reason)
