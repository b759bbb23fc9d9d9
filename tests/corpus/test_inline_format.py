"""The research community's inline format (a post's context after a `<EOS>`
token, tagged X): reading, writing, the round trip, and `convert` / `export`."""
import pytest
import spacy
from spacy.tokens import Doc, DocBin
from typer.testing import CliRunner

import spacy_ita  # noqa: F401  (Doc extensions, msgpack hooks)
from spacy_ita import VisualContext
from spacy_ita.cli import app
from spacy_ita.corpus.mner import detect_format, format_mner, read_mner, write_mner

# Three posts: a context with unicode, an empty context, and no <EOS> at all.
INLINE = (
    "IMGID:16_05_01_1\n"
    "RT\tO\n"
    "@KawhiLeonard\tB-PER\n"
    "in\tO\n"
    "Zürich\tB-LOC\n"
    "🏀\tO\n"
    "<EOS>\tX\n"
    "Kawhi\tX\n"
    "Leonard\tX\n"
    "(person)\tX\n"
    ";\tX\n"
    "Zürich\tX\n"
    "(location)\tX\n"
    "東京\tX\n"
    "\n"
    "IMGID:16_05_01_2\n"
    "Nothing\tO\n"
    "here\tO\n"
    "<EOS>\tX\n"
    "\n"
    "IMGID:16_05_01_3\n"
    "New\tB-ORG\n"
    "York\tI-ORG\n"
    "Mets\tI-ORG\n"
    "\n"
)


@pytest.fixture(scope="module")
def vocab():
    return spacy.blank("en").vocab


def write(tmp_path, text, name="inline.txt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def summary(docs):
    return [
        (doc._.image_id, [t.text for t in doc], [(e.start, e.end, e.label_) for e in doc.ents],
         None if doc._.visual_context is None else doc._.visual_context.to_dict())
        for doc in docs
    ]


def context(**fields):
    return VisualContext(**fields).to_dict()


def test_reads_the_context_after_eos_into_the_chosen_field(tmp_path, vocab):
    path = write(tmp_path, INLINE)
    assert detect_format(path) == "inline"
    docs = list(read_mner(path, nlp_or_vocab=vocab, inline_field="knowledge"))
    assert summary(docs) == [
        ("16_05_01_1", ["RT", "@KawhiLeonard", "in", "Zürich", "🏀"], [(1, 2, "PER"), (3, 4, "LOC")],
         context(knowledge=["Kawhi Leonard (person) ; Zürich (location) 東京"])),
        ("16_05_01_2", ["Nothing", "here"], [], context()),
        ("16_05_01_3", ["New", "York", "Mets"], [(0, 3, "ORG")], None),
    ]
    (first, *_) = read_mner(path, nlp_or_vocab=vocab, inline_field="captions")
    assert first._.visual_context.captions == ["Kawhi Leonard (person) ; Zürich (location) 東京"]
    assert first._.visual_context.knowledge == []


def test_space_separated_files_without_imgid_lines(tmp_path, vocab):
    text = "EU B-ORG\nrejects O\n<EOS> X\nEuropean X\nUnion X\n\nPeter B-PER\n<EOS> X\n"
    path = write(tmp_path, text)
    assert detect_format(path) == "inline"
    assert summary(read_mner(path, nlp_or_vocab=vocab, inline_field="knowledge")) == [
        (None, ["EU", "rejects"], [(0, 1, "ORG")], context(knowledge=["European Union"])),
        (None, ["Peter"], [(0, 1, "PER")], context()),
    ]


def test_plain_mner_is_not_taken_for_inline(tmp_path):
    assert detect_format(write(tmp_path, "IMGID:1\nEOS\tO\n<EOS>x\tO\n")) == "mner"


@pytest.mark.parametrize("with_ids", [True, False])
def test_round_trip_is_lossless(tmp_path, vocab, with_ids):
    text = INLINE if with_ids else "".join(
        line + "\n" for line in INLINE.splitlines() if not line.startswith("IMGID:"))
    original = write(tmp_path, text)
    docs = list(read_mner(original, nlp_or_vocab=vocab, inline_field="knowledge"))
    write_mner(docs, tmp_path / "again.txt", inline_field="knowledge")
    again = list(read_mner(tmp_path / "again.txt", nlp_or_vocab=vocab, inline_field="knowledge"))
    assert summary(again) == summary(docs)
    assert [doc.text for doc in again] == [doc.text for doc in docs]
    assert (tmp_path / "again.txt").read_text(encoding="utf-8") == text


def test_writing_splits_a_context_into_words_and_joins_its_items(tmp_path, vocab):
    doc = spacy.blank("en")("Kobe at Staples")
    doc._.visual_context = VisualContext(knowledge=["Kobe (person) ;\tStaples Center", "LA"],
                                         captions=["not written"])
    (post,) = format_mner([doc], inline_field="knowledge")
    assert post == ("Kobe\tO\nat\tO\nStaples\tO\n<EOS>\tX\nKobe\tX\n(person)\tX\n;\tX\n"
                    "Staples\tX\nCenter\tX\nLA\tX\n\n")
    (plain,) = format_mner([doc])
    assert "<EOS>" not in plain


def test_writing_refuses_what_would_read_back_differently(vocab):
    doc = Doc(vocab, words=["a", "<EOS>", "b"])
    doc._.visual_context = VisualContext()
    with pytest.raises(ValueError, match="Doc 0, token 1: token <EOS> would read back"):
        list(format_mner([doc], inline_field="knowledge"))
    with pytest.raises(ValueError, match="Unknown context field 'tags'"):
        list(format_mner([doc], inline_field="tags"))


@pytest.mark.parametrize(
    "text,line,message",
    [
        ("a\tB-PER\n<EOS>\tX\nb\tB-PER\n", 3, "tag 'B-PER' after <EOS>"),
        ("IMGID:1\n<EOS>\tX\nb\tX\n", 2, "<EOS> before any token of the post"),
        ("a\tO\n<EOS>\tX\nNew York\tX\n", 3, "must not contain whitespace"),
        ("a\tO\n<EOS> X\nb\n", 3, "expected 'token<TAB>tag' or 'token tag'"),
        ("a\tPER\n<EOS>\tX\n", 1, "unknown tag 'PER'"),
        ("IMGID:1\na\tO\n<EOS>\tX\n\nb\tO\n", 5, "token line outside a post"),
    ],
)
def test_errors_name_file_and_line(tmp_path, vocab, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as excinfo:
        list(read_mner(path, nlp_or_vocab=vocab, inline_field="knowledge"))
    assert str(excinfo.value).startswith(f"{path}:{line}: ")
    assert message in str(excinfo.value)


def run(*args):
    return CliRunner().invoke(app, [*map(str, args)])


def read_docs(path, vocab):
    return list(DocBin().from_disk(path).get_docs(vocab))


def test_convert_detects_inline_and_export_writes_it_back(tmp_path, vocab):
    source = write(tmp_path, INLINE)
    result = run("convert", source, tmp_path / "corpus.spacy")
    assert result.exit_code == 0, result.output
    assert "Read the inline format" in result.output
    assert "1 of 3 docs have a context (1 more an empty one)" in result.output
    docs = read_docs(tmp_path / "corpus.spacy", vocab)
    assert summary(docs) == summary(read_mner(source, nlp_or_vocab=vocab, inline_field="knowledge"))
    result = run("export", tmp_path / "corpus.spacy", tmp_path / "out" / "inline.txt")
    assert result.exit_code == 0, result.output
    assert "Wrote 3 posts" in result.output
    assert (tmp_path / "out" / "inline.txt").read_text(encoding="utf-8") == INLINE
    result = run("export", tmp_path / "corpus.spacy", tmp_path / "plain.txt", "--format", "mner")
    assert result.exit_code == 0, result.output
    plain = (tmp_path / "plain.txt").read_text(encoding="utf-8")
    assert "<EOS>" not in plain and "@KawhiLeonard\tB-PER\n" in plain


def test_convert_with_a_chosen_field_and_a_captions_file(tmp_path, vocab):
    source = write(tmp_path, INLINE)
    captions = write(tmp_path, "16_05_01_3.jpg :a baseball team\n", "captions.txt")
    result = run("convert", source, tmp_path / "c.spacy", "--inline-field", "ocr_text",
                 "--captions", captions)
    assert result.exit_code == 0, result.output
    docs = read_docs(tmp_path / "c.spacy", vocab)
    assert docs[0]._.visual_context.ocr_text == ["Kawhi Leonard (person) ; Zürich (location) 東京"]
    assert docs[2]._.visual_context == VisualContext(captions=["a baseball team"])
    result = run("export", tmp_path / "c.spacy", tmp_path / "ocr.txt", "--inline-field", "ocr_text")
    assert result.exit_code == 0, result.output
    back = read_mner(tmp_path / "ocr.txt", nlp_or_vocab=vocab, inline_field="ocr_text")
    assert [doc._.visual_context.ocr_text if doc._.visual_context else None for doc in back] == [
        ["Kawhi Leonard (person) ; Zürich (location) 東京"], [], []]


def test_cli_errors(tmp_path):
    source = write(tmp_path, INLINE)
    result = run("convert", source, tmp_path / "x.spacy", "--format", "mner")
    assert result.exit_code == 1
    assert f"{source}:7: unknown tag 'X'" in result.output
    result = run("convert", source, tmp_path / "x.spacy", "--inline-field", "tags")
    assert result.exit_code == 2 and "'tags' is not a context field" in result.output
    result = run("convert", source, tmp_path / "x.spacy", "--n-sents", "2")
    assert result.exit_code == 1 and "different images" in result.output
    no_ids = write(tmp_path, "a\tO\n<EOS>\tX\nb\tX\n\nc\tO\n", "no_ids.txt")
    result = run("convert", no_ids, tmp_path / "x.spacy", "--n-sents", "2")
    assert result.exit_code == 1 and "different contexts" in result.output
    assert not (tmp_path / "x.spacy").exists()


def test_export_names_the_file_and_the_doc_it_cannot_read(tmp_path, vocab):
    """export read the DocBin itself: invalid UTF-8 in a doc's user data was
    an error naming neither, a malformed stored context a traceback."""
    docs = [spacy.blank("en", vocab=vocab)(f"post {i}") for i in range(3)]
    docs[1]._.visual_context = VisualContext(captions=["XYZW"])
    doc_bin = DocBin(docs=docs, store_user_data=True)
    doc_bin.user_data[1] = doc_bin.user_data[1].replace(b"XYZW", b"\xed\xa0\xbdW")
    doc_bin.to_disk(tmp_path / "utf8.spacy")
    docs[1]._.visual_context.captions.append(5)  # stored malformed, read back wrapped
    DocBin(docs=docs, store_user_data=True).to_disk(tmp_path / "context.spacy")
    (tmp_path / "cut.spacy").write_bytes((tmp_path / "context.spacy").read_bytes()[:60])
    for name, error in (("utf8", "doc 1: cannot be decoded (UnicodeDecodeError: 'utf-8' codec"),
                        ("context", "Invalid Doc._.visual_context on doc 1 ('post 1')"),
                        ("cut", "it is truncated or not a .spacy file")):
        result = run("export", tmp_path / f"{name}.spacy", tmp_path / "out.txt")
        assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.exc_info
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1
        assert f"{tmp_path / name}.spacy" in result.output and error in result.output
    assert not (tmp_path / "out.txt").exists()


def test_export_names_the_file_of_a_doc_the_format_cannot_hold(tmp_path, vocab):
    """A doc without tokens was "Error: Doc 1 has no tokens", naming no file."""
    docs = [spacy.blank("en", vocab=vocab)(text) for text in ("post 0", "", "post 2")]
    DocBin(docs=docs).to_disk(tmp_path / "empty.spacy")
    result = run("export", tmp_path / "empty.spacy", tmp_path / "out.txt")
    assert result.exit_code == 1, result.exc_info
    assert result.output == f"Error: {tmp_path / 'empty.spacy'}: Doc 1 has no tokens\n"
    assert not (tmp_path / "out.txt").exists()
