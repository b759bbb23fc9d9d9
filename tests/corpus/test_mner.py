"""Tests for the MNER reader/writer and the `convert` command."""
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import spacy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spacy.tokens import Doc, DocBin, Span

import spacy_ita  # noqa: F401  (Doc extensions, msgpack hooks)
from helpers import REPO_ROOT, SHARED_DATA, mner_summary
from spacy_ita import VisualContext
from spacy_ita.corpus.mner import bio_to_spans, read_captions, read_mner, write_mner

TWITTER2015 = SHARED_DATA / "twitter2015"

SAMPLE = (
    "IMGID:1\n"
    "RT\tO\n"
    "New\tB-LOC\n"
    "Orleans\tI-LOC\n"
    "\n"
    "IMGID:2\n"
    "Obama\tI-PER\n"
    "and\tO\n"
    "Hamas\tI-ORG\n"
    "x\tI-OTHER\n"
)


def write(tmp_path: Path, text: str, name: str = "in.txt", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def read_error(path: Path, vocab, captions=None) -> str:
    with pytest.raises(ValueError) as excinfo:
        list(read_mner(path, captions, vocab))
    return str(excinfo.value)


def test_reads_posts_with_orphan_i_opening_entities(tmp_path, vocab):
    docs = list(read_mner(write(tmp_path, SAMPLE), nlp_or_vocab=vocab))
    assert mner_summary(docs) == [
        ("1", ["RT", "New", "Orleans"], [(1, 3, "LOC")]),
        ("2", ["Obama", "and", "Hamas", "x"], [(0, 1, "PER"), (2, 3, "ORG"), (3, 4, "OTHER")]),
    ]
    assert docs[1].text == "Obama and Hamas x"
    assert [t.ent_iob_ for t in docs[0]] == ["O", "B", "I"]  # O is annotated, not missing
    assert all(doc._.visual_context is None for doc in docs)


@pytest.mark.parametrize(
    "tags,expected",
    [
        (["B-X", "I-X", "I-Y", "O", "I-X"], [(0, 2, "X"), (2, 3, "Y"), (4, 5, "X")]),
        (["B-X", "B-X", "I-X"], [(0, 1, "X"), (1, 3, "X")]),
        (
            ["B-X", "I-X", "E-X", "S-Y", "E-Z", "I-Z"],
            [(0, 3, "X"), (3, 4, "Y"), (4, 5, "Z"), (5, 6, "Z")],
        ),
        (["U-X", "B-Y", "L-Y", "O", "L-X"], [(0, 1, "X"), (1, 3, "Y"), (4, 5, "X")]),
        (["O", "O"], []),
    ],
)
def test_bio_to_spans(tags, expected):
    pairs = [("O", "") if tag == "O" else tuple(tag.split("-", 1)) for tag in tags]
    assert bio_to_spans(pairs) == expected


def test_bioes_and_any_label_set(tmp_path, vocab):
    text = "IMGID:7\nA\tS-MISC\nB\tB-PER\nC\tE-PER\nD\tU-ORG\nE\tL-LOC\n"
    (doc,) = read_mner(write(tmp_path, text), nlp_or_vocab=vocab)
    assert [(e.text, e.label_) for e in doc.ents] == [
        ("A", "MISC"), ("B C", "PER"), ("D", "ORG"), ("E", "LOC")
    ]


def test_bom_crlf_blank_lines_and_missing_final_newline(tmp_path, vocab):
    text = "\r\n\r\n" + SAMPLE.replace("\n\n", "\n \t \n\n\n").replace("\n", "\r\n").rstrip("\r\n")
    path = write(tmp_path, "\ufeff" + text)
    expected = mner_summary(read_mner(write(tmp_path, SAMPLE, "plain.txt"), nlp_or_vocab=vocab))
    assert mner_summary(read_mner(path, nlp_or_vocab=vocab)) == expected


def test_plain_conll_without_imgid(tmp_path, vocab):
    docs = list(read_mner(write(tmp_path, "a\tB-X\nb\tO\n\nc\tO\n"), nlp_or_vocab=vocab))
    assert mner_summary(docs) == [(None, ["a", "b"], [(0, 1, "X")]), (None, ["c"], [])]


def test_lone_whitespace_token_is_a_space_token(tmp_path, vocab):
    (doc,) = read_mner(write(tmp_path, "IMGID:1\n:\tO\n\u00a0\tO\nx\tB-PER\n"), nlp_or_vocab=vocab)
    assert [t.text for t in doc] == [":", "\u00a0", "x"]
    assert doc[1].is_space


def test_default_vocab_and_lang(tmp_path):
    (doc,) = read_mner(write(tmp_path, SAMPLE.split("\n\n")[0]), lang="de")
    assert doc.vocab.lang == "de"
    nlp = spacy.blank("en")
    (doc,) = read_mner(write(tmp_path, SAMPLE.split("\n\n")[0]), nlp_or_vocab=nlp)
    assert doc.vocab is nlp.vocab


def test_reading_streams(tmp_path, vocab):
    path = write(tmp_path, SAMPLE + "\nIMGID:3\nbroken line\n")
    docs = read_mner(path, nlp_or_vocab=vocab)
    assert next(docs)._.image_id == "1"
    assert next(docs)._.image_id == "2"
    with pytest.raises(ValueError, match=r"in\.txt:13:"):
        next(docs)


@pytest.mark.parametrize(
    "text,line,message",
    [
        ("IMGID:1\nfoo O\n", 2, "expected 'token<TAB>tag', found no TAB"),
        ("IMGID:1\nfoo\tO\tx\n", 2, "found 2 TABs"),
        ("IMGID:1\nfoo\tO\nbar\tB-\n", 3, "unknown tag 'B-'"),
        ("IMGID:1\nfoo\tX-PER\n", 2, "unknown tag 'X-PER'"),
        ("IMGID:1\nfoo\tPER\n", 2, "unknown tag 'PER'"),
        ("IMGID:1\nfoo\tb-PER\n", 2, "unknown tag 'b-PER'"),
        ("IMGID:1\nfoo\t\n", 2, "found no TAB"),
        ("IMGID:1\n\tO\n", 2, "empty token"),
        ("IMGID:1\nNew York\tB-LOC\n", 2, "must not contain whitespace"),
        ("IMGID:1\nNew\u00a0York\tB-LOC\n", 2, "must not contain whitespace"),
        ("IMGID:1\na\x0bb\tO\n", 2, "tab or line break"),
        ("foo\tO\n\nIMGID:1\nbar\tO\n", 3, "either every post starts with an IMGID line or none"),
        ("IMGID:1\nfoo\tO\n\nbar\tO\n", 4, "token line outside a post"),
        ("IMGID:1\n\nIMGID:2\nfoo\tO\n", 1, "IMGID:1 has no tokens"),
        ("IMGID:1\nfoo\tO\n\nIMGID:2\nIMGID:3\nfoo\tO\n", 4, "IMGID:2 has no tokens"),
        ("IMGID:1\nfoo\tO\n\nIMGID:2\n", 4, "IMGID:2 has no tokens"),
        ("IMGID:\nfoo\tO\n", 1, "invalid image id ''"),
        ("IMGID:a b\nfoo\tO\n", 1, "invalid image id 'a b'"),
    ],
)
def test_errors_name_file_and_line(tmp_path, vocab, text, line, message):
    path = write(tmp_path, text)
    error = read_error(path, vocab)
    assert error.startswith(f"{path}:{line}: ")
    assert message in error


def test_read_captions(tmp_path):
    text = "\ufeff12.jpg :a dog: on a mat\r\n\r\n13 : two cats \r\nx_1.JPEG:c\n14.jpg :\n"
    path = write(tmp_path, text, "c.txt")
    assert read_captions(path) == {"12": "a dog: on a mat", "13": "two cats", "x_1": "c", "14": ""}


@pytest.mark.parametrize(
    "text,line,message",
    [
        ("1.jpg :a\n2.jpg a caption\n", 2, "malformed caption line"),
        ("1.jpg :a\nmy image.jpg :b\n", 2, "malformed caption line"),
        ("1.jpg :a\n\n1 :b\n", 3, "duplicate caption for image id '1' (first given on line 1)"),
    ],
)
def test_caption_errors_name_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path, text, "c.txt")
    with pytest.raises(ValueError) as excinfo:
        read_captions(path)
    assert str(excinfo.value).startswith(f"{path}:{line}: ")
    assert message in str(excinfo.value)


def test_captions_attach_by_image_id(tmp_path, vocab):
    captions = write(tmp_path, "2.jpg :a man speaking\n99.jpg :unused\n", "c.txt")
    docs = list(read_mner(write(tmp_path, SAMPLE), captions, vocab))
    assert docs[0]._.visual_context is None
    assert docs[1]._.visual_context == VisualContext(captions=["a man speaking"])
    captions = write(tmp_path, "1 :\n", "empty.txt")
    docs = list(read_mner(write(tmp_path, SAMPLE), captions, vocab))
    assert docs[0]._.visual_context == VisualContext(captions=[])
    bad = write(tmp_path, "2.jpg :a\n2.png :b\n", "bad.txt")
    assert read_error(write(tmp_path, SAMPLE), vocab, bad).startswith(f"{bad}:2: ")


def test_round_trip(tmp_path, vocab):
    original = write(tmp_path, SAMPLE.replace("I-PER", "S-PER"))
    docs = list(read_mner(original, nlp_or_vocab=vocab))
    write_mner(docs, tmp_path / "out.txt")
    assert mner_summary(read_mner(tmp_path / "out.txt", nlp_or_vocab=vocab)) == mner_summary(docs)
    assert "Obama\tB-PER\n" in (tmp_path / "out.txt").read_text(encoding="utf-8")


def test_a_numeric_image_id_is_written_as_text(tmp_path, vocab):
    doc = Doc(vocab, words=["a"])
    doc._.image_id = 123  # as a .spacy made elsewhere may hold it
    write_mner([doc], tmp_path / "out.txt")
    assert (tmp_path / "out.txt").read_text().startswith("IMGID:123\n")
    doc._.image_id = ["a"]
    with pytest.raises(ValueError, match=r"Doc 0: the image id must be a string, got \['a'\]"):
        write_mner([doc], tmp_path / "out.txt")


def test_write_rejects_what_cannot_be_read_back(tmp_path, vocab):
    with_id = Doc(vocab, words=["a"])
    with_id._.image_id = "1"
    with pytest.raises(ValueError, match="all or none"):
        write_mner([with_id, Doc(vocab, words=["b"])], tmp_path / "out.txt")
    with pytest.raises(ValueError, match="must not contain whitespace"):
        write_mner([Doc(vocab, words=["a b"])], tmp_path / "out.txt")
    with pytest.raises(ValueError, match="tab or line break"):
        write_mner([Doc(vocab, words=["a", "\n"])], tmp_path / "out.txt")


# U+FEFF is left out: as a file's first character it is a byte order mark.
token_text = st.text(
    st.characters(
        blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), blacklist_characters="\ufeff"
    ),
    min_size=1,
    max_size=8,
).filter(lambda text: not any(char.isspace() for char in text))
tokens = st.one_of(token_text, st.sampled_from(["\u00a0", " ", "IMGID:3", "B-PER"]))
labels = st.one_of(st.sampled_from(["PER", "LOC", "ORG", "OTHER", "MISC"]), token_text)


@st.composite
def posts(draw):
    words = draw(st.lists(tokens, min_size=1, max_size=12))
    spans, i = [], 0
    while i < len(words):
        if draw(st.booleans()):
            end = draw(st.integers(i + 1, len(words)))
            spans.append((i, end, draw(labels)))
            i = end
        else:
            i += 1
    return words, spans


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.lists(posts(), min_size=1, max_size=5), with_ids=st.booleans())
def test_round_trip_property(tmp_path, vocab, data, with_ids):
    docs = []
    for n, (words, spans) in enumerate(data):
        doc = Doc(vocab, words=words, spaces=[True] * (len(words) - 1) + [False])
        doc.set_ents([Span(doc, s, e, label=label) for s, e, label in spans], default="outside")
        doc._.image_id = f"img{n}" if with_ids else None
        docs.append(doc)
    path = tmp_path / "prop.txt"
    write_mner(docs, path)
    back = list(read_mner(path, nlp_or_vocab=vocab))
    assert mner_summary(back) == mner_summary(docs)
    assert [doc.text for doc in back] == [doc.text for doc in docs]


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "spacy_ita", "convert", *map(str, args)],
        capture_output=True, text=True, cwd=REPO_ROOT,
    )


def test_cli_help():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for option in ("--captions", "--knowledge", "--lang", "--n-sents", "INPUT"):
        assert option in result.stdout


def test_cli_converts(tmp_path, vocab):
    captions = write(tmp_path, "1.jpg :a street\n2.jpg :a speech\n", "c.txt")
    result = run_cli(write(tmp_path, SAMPLE), tmp_path / "out", "--captions", captions)
    assert result.returncode == 0, result.stderr
    assert "2 docs with 4 entities" in result.stdout
    assert "2 of 2 docs have a context" in result.stdout
    docs = list(DocBin().from_disk(tmp_path / "out" / "in.spacy").get_docs(vocab))
    assert mner_summary(docs) == mner_summary(read_mner(tmp_path / "in.txt", nlp_or_vocab=vocab))
    assert docs[1]._.visual_context == VisualContext(captions=["a speech"])


def test_cli_adds_knowledge_beside_captions(tmp_path, vocab):
    captions = write(tmp_path, "1.jpg :a street\n", "c.txt")
    knowledge = write(tmp_path, "2.jpg :Named entities: 1. Obama (person)\n", "k.txt")
    result = run_cli(write(tmp_path, SAMPLE), tmp_path / "out.spacy", "--captions", captions,
                     "--knowledge", knowledge)
    assert result.returncode == 0, result.stderr
    assert "2 of 2 docs have a context" in result.stdout
    docs = list(DocBin().from_disk(tmp_path / "out.spacy").get_docs(vocab))
    assert [doc._.visual_context for doc in docs] == [
        VisualContext(captions=["a street"]),
        VisualContext(knowledge=["Named entities: 1. Obama (person)"]),
    ]


def test_cli_groups_plain_conll_posts(tmp_path, vocab):
    path = write(tmp_path, "a\tB-X\n\nb\tO\n\nc\tI-Y\n")
    result = run_cli(path, tmp_path / "grouped.spacy", "--n-sents", "2")
    assert result.returncode == 0, result.stderr
    docs = list(DocBin().from_disk(tmp_path / "grouped.spacy").get_docs(vocab))
    assert mner_summary(docs) == [(None, ["a", "b"], [(0, 1, "X")]), (None, ["c"], [(0, 1, "Y")])]
    assert [s.text for s in docs[0].sents] == ["a", "b"]
    result = run_cli(write(tmp_path, SAMPLE), tmp_path / "x.spacy", "-n", "2")
    assert result.returncode == 1 and "--n-sents 1" in result.stderr


def test_cli_reports_malformed_input_without_traceback(tmp_path):
    path = write(tmp_path, "IMGID:1\nfoo\tBAD\n")
    result = run_cli(path, tmp_path / "out.spacy")
    assert result.returncode == 1
    assert f"{path}:2: unknown tag 'BAD'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "out.spacy").exists()
    result = run_cli(write(tmp_path, SAMPLE), tmp_path / "out.spacy", "--lang", "zz")
    assert result.returncode == 1 and "Error:" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.data
def test_twitter2015_valid(tmp_path):
    valid = TWITTER2015 / "valid.txt"
    if not valid.exists():
        pytest.skip(f"{valid} not available")
    docs = list(read_mner(valid, TWITTER2015 / "blip2_captions.txt"))
    assert len(docs) == 1000
    labels = Counter(ent.label_ for doc in docs for ent in doc.ents)
    assert sum(labels.values()) == 1594
    assert labels == {"PER": 567, "LOC": 543, "ORG": 251, "OTHER": 233}
    assert all(doc._.image_id for doc in docs)
    # Every image has a caption line; BLIP-2's caption for 71406.jpg is empty.
    assert all(isinstance(doc._.visual_context, VisualContext) for doc in docs)
    empty = [doc._.image_id for doc in docs if doc._.visual_context.is_empty()]
    assert empty == ["71406"]
    assert all(len(doc._.visual_context.captions) == 1 for doc in docs if doc._.image_id != "71406")
    result = run_cli(valid, tmp_path, "--captions", TWITTER2015 / "blip2_captions.txt")
    assert result.returncode == 0, result.stderr
    assert "Wrote 1000 docs with 1594 entities" in result.stdout
    assert "999 of 1000 docs have a context (1 more an empty one)" in result.stdout
