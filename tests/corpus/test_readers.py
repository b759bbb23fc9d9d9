"""Tests for the `spacy-ita.MultimodalCorpus.v1` corpus reader."""
from pathlib import Path

import pytest
import spacy
from spacy.tokens import Doc, DocBin, Span

import spacy_ita  # noqa: F401  (Doc extensions, msgpack hooks)
from spacy_ita import VisualContext

READER = "spacy-ita.MultimodalCorpus.v1"
CONTEXTS = [
    VisualContext(captions=["a man on a stage"], object_tags=["person"], ocr_text=["VOTE"]),
    None,
    VisualContext(captions=["a dog"]),
]


@pytest.fixture
def nlp():
    return spacy.blank("en")


def make_docs(nlp):
    docs = []
    for i, context in enumerate(CONTEXTS):
        words = ["Obama", "visits", "Paris"] + ["!"] * i  # 3, 4 and 5 tokens
        doc = Doc(nlp.vocab, words=words, spaces=[True] * (len(words) - 1) + [False])
        doc.set_ents([Span(doc, 0, 1, "PER"), Span(doc, 2, 3, "LOC")], default="outside")
        doc._.image_id = f"img{i}"
        doc._.visual_context = context
        docs.append(doc)
    return docs


def save(docs, path: Path) -> Path:
    DocBin(docs=docs, store_user_data=True).to_disk(path)
    return path


@pytest.fixture
def corpus_path(nlp, tmp_path):
    return save(make_docs(nlp), tmp_path / "train.spacy")


def test_reader_keeps_visual_context(nlp, corpus_path):
    reader = spacy.registry.readers.get(READER)(corpus_path)
    examples = list(reader(nlp))
    assert [eg.predicted._.visual_context for eg in examples] == CONTEXTS
    assert [eg.predicted._.image_id for eg in examples] == ["img0", "img1", "img2"]
    for eg in examples:
        assert eg.predicted.text == eg.reference.text
        assert not eg.predicted.has_annotation("ENT_IOB")
        ents = [(e.text, e.label_) for e in eg.reference.ents]
        assert ents == [("Obama", "PER"), ("Paris", "LOC")]


def test_stock_corpus_loses_visual_context(nlp, corpus_path):
    stock = spacy.registry.readers.get("spacy.Corpus.v1")(corpus_path, gold_preproc=False)
    examples = list(stock(nlp))
    assert [eg.reference._.visual_context for eg in examples] == CONTEXTS
    assert [eg.predicted._.visual_context for eg in examples] == [None, None, None]


def test_reader_resolves_from_config(nlp, corpus_path):
    config = {"corpus": {"@readers": READER, "path": str(corpus_path), "gold_preproc": True}}
    reader = spacy.registry.resolve(config)["corpus"]
    examples = list(reader(nlp))
    assert [eg.predicted._.visual_context for eg in examples] == CONTEXTS
    assert [t.text for t in examples[2].predicted] == ["Obama", "visits", "Paris", "!", "!"]


def test_directory_max_length_limit_and_shuffle(nlp, tmp_path):
    docs = make_docs(nlp)
    (tmp_path / "sub").mkdir()
    save(docs[:2], tmp_path / "a.spacy")
    save(docs[2:], tmp_path / "sub" / "b.spacy")
    create = spacy.registry.readers.get(READER)

    def ids(**kwargs):
        return [eg.predicted._.image_id for eg in create(tmp_path, **kwargs)(nlp)]

    assert ids() == ["img0", "img1", "img2"]
    assert ids(max_length=4) == ["img0", "img1"]
    assert ids(limit=2) == ["img0", "img1"]
    shuffled = [tuple(ids(shuffle=True)) for _ in range(30)]
    assert {tuple(sorted(order)) for order in shuffled} == {("img0", "img1", "img2")}
    assert len(set(shuffled)) > 1


def test_missing_path_is_a_clear_error(nlp, tmp_path):
    create = spacy.registry.readers.get(READER)
    with pytest.raises(ValueError, match="does not exist"):
        list(create(tmp_path / "missing.spacy")(nlp))
    with pytest.raises(ValueError, match="no .spacy files"):
        list(create(tmp_path)(nlp))
    with pytest.raises(ValueError, match="needs a path"):
        list(create(None)(nlp))


def broken_docs(nlp, tmp_path):
    """Two files whose second doc is broken: an entity tag I with no B before
    it, and a visual context whose captions are a number."""
    tags = save(make_docs(nlp)[:2], tmp_path / "tags.spacy")
    doc_bin = DocBin(store_user_data=True).from_disk(tags)
    doc_bin.tokens[1] = doc_bin.tokens[1].copy()  # (msgpack's arrays are read-only)
    doc_bin.tokens[1][0, doc_bin.attrs.index(spacy.attrs.ENT_IOB)] = 1  # I
    doc_bin.to_disk(tags)
    docs = make_docs(nlp)[:2]
    key = next(key for key in docs[0].user_data if key[1] == "visual_context")
    docs[1].user_data[key] = {"captions": 5}
    return tags, save(docs, tmp_path / "context.spacy")


def test_a_broken_doc_is_named_by_file_and_index(nlp, tmp_path):
    """Not an error from deep inside training or scoring, without the file."""
    from spacy_ita.corpus.readers import CorpusError

    tags, context = broken_docs(nlp, tmp_path)
    with pytest.raises(CorpusError, match=rf"^{tags}: doc 1 has invalid entity tags: "
                                          r"\[E093\].* I without B Obama\|I"):
        list(spacy.registry.readers.get(READER)(tags)(nlp))
    with pytest.raises(CorpusError, match=rf"^{context}: Invalid Doc._.visual_context on "
                                          r"doc 1 .*captions must be a list of strings"):
        list(spacy.registry.readers.get(READER)(context)(nlp))
    # A broken doc the reader does not return (past `limit`) is not read as one.
    assert len(list(spacy.registry.readers.get(READER)(tags, limit=1)(nlp))) == 1


WRAPPER = "__spacy_ita_visual_context__"  # how the msgpack hook stores a VisualContext


@pytest.mark.parametrize(
    "stored, message",
    [
        ({WRAPPER: {"bogus": ["x"]}}, r"Invalid Doc._.visual_context on doc 1 .*\['bogus'\]"),
        ({WRAPPER: {"captions": [1]}}, r"Invalid Doc._.visual_context on doc 1 .*captions\[0\]"),
        ({WRAPPER: 5}, r"Doc._.visual_context on doc 1 .* must be a spacy_ita.VisualContext"),
        ("XYZW", r"doc 1: cannot be decoded \(UnicodeDecodeError"),  # bytes made invalid UTF-8
    ],
)
def test_user_data_that_fails_to_decode_is_named_by_file_and_index(nlp, tmp_path, stored, message):
    """msgpack decodes user data inside DocBin.get_docs, before the doc is
    checked: its errors were tracebacks without the file."""
    from spacy_ita.corpus.readers import CorpusError

    docs = make_docs(nlp)
    key = next(key for key in docs[0].user_data if key[1] == "visual_context")
    docs[1].user_data[key] = stored
    doc_bin = DocBin(docs=docs, store_user_data=True)
    doc_bin.user_data[1] = doc_bin.user_data[1].replace(b"XYZW", b"\xed\xa0\xbdW")
    doc_bin.to_disk(tmp_path / "train.spacy")
    with pytest.raises(CorpusError, match=rf"^{tmp_path / 'train.spacy'}: {message}"):
        list(spacy.registry.readers.get(READER)(tmp_path / "train.spacy")(nlp))
