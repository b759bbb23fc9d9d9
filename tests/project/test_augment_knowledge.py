"""The project's knowledge augmentation (scripts/augment_knowledge.py): a fifth
of the training posts in each of the shift's conditions, the same posts and
gold entities, dev and test untouched, `released` a plain copy."""
import pytest
import spacy
import srsly
import typer
from spacy.tokens import Doc, DocBin, Span

import augment_knowledge
from spacy_ita.knowledge.mentions import parse_mentions
from spacy_ita.knowledge.task import DEFAULT_LABELS
from spacy_ita.visual_context import VisualContext

WORDS = "Kawhi Leonard and the Raptors win the NBA Finals in Toronto tonight at home".split()
GOLD = [(0, 2, "PER"), (4, 5, "ORG"), (7, 9, "OTHER"), (10, 11, "LOC")]
PGIM = ("Named entities:1. Kawhi Leonard (person/player)2. Raptors (sports team)"
        "3. Toronto (city)Reasoning:The post is about basketball.")
N_POSTS = 20


def write_corpus(folder):
    """train/dev/test.spacy: N_POSTS posts with gold entities and PGIM's knowledge."""
    folder.mkdir()
    vocab = spacy.blank("en").vocab
    for split in ("train", "dev", "test"):
        docs = []
        for _ in range(N_POSTS):
            doc = Doc(vocab, words=WORDS)
            doc.ents = [Span(doc, start, end, label) for start, end, label in GOLD]
            doc._.visual_context = VisualContext(knowledge=[PGIM])
            docs.append(doc)
        DocBin(docs=docs, store_user_data=True).to_disk(folder / f"{split}.spacy")
    return folder


def read_docs(path):
    return list(DocBin().from_disk(path).get_docs(spacy.blank("en").vocab))


def test_augmented_training_knowledge_is_varied_and_the_rest_kept(tmp_path):
    corpus = write_corpus(tmp_path / "released")
    augment_knowledge.main(corpus, tmp_path / "out", knowledge="augmented", seed=0)
    for split in ("dev", "test"):
        assert (tmp_path / "out" / f"{split}.spacy").read_bytes() == \
            (corpus / f"{split}.spacy").read_bytes()
    docs = read_docs(tmp_path / "out" / "train.spacy")
    assert len(docs) == N_POSTS
    assert all([t.text for t in doc] == WORDS for doc in docs)
    assert all([(e.start, e.end, e.label_) for e in doc.ents] == GOLD for doc in docs)
    knowledge = [" ".join(doc._.visual_context.knowledge) for doc in docs]
    # One group of the five keeps PGIM's answer; the others are typed with the labels.
    assert knowledge.count(PGIM) == N_POSTS // 5
    for text in knowledge:
        if text != PGIM:
            assert {m.type.upper() for m in parse_mentions(text)} <= set(DEFAULT_LABELS)
    groups = srsly.read_json(tmp_path / "out" / "augmentation.json")["groups"]
    assert [group["posts"] for group in groups.values()] == [N_POSTS // 5] * 5
    assert groups["renamed, dropped and spurious"]["dropped"] > 0
    # Seeded: the same run writes the same corpus; another seed another one.
    augment_knowledge.main(corpus, tmp_path / "again", knowledge="augmented", seed=0)
    assert (tmp_path / "again" / "train.spacy").read_bytes() == \
        (tmp_path / "out" / "train.spacy").read_bytes()
    augment_knowledge.main(corpus, tmp_path / "other", knowledge="augmented", seed=1)
    assert [" ".join(d._.visual_context.knowledge)
            for d in read_docs(tmp_path / "other" / "train.spacy")] != knowledge


def test_released_knowledge_is_copied_and_an_unknown_choice_or_missing_split_refused(tmp_path):
    corpus = write_corpus(tmp_path / "released")
    augment_knowledge.main(corpus, tmp_path / "out", knowledge="released", seed=0)
    for split in ("train", "dev", "test"):
        assert (tmp_path / "out" / f"{split}.spacy").read_bytes() == \
            (corpus / f"{split}.spacy").read_bytes()
    with pytest.raises(typer.BadParameter, match="choose from augmented, released"):
        augment_knowledge.main(corpus, tmp_path / "bad", knowledge="chatgpt", seed=0)
    (corpus / "dev.spacy").unlink()
    with pytest.raises(typer.BadParameter, match="dev.spacy not found"):
        augment_knowledge.main(corpus, tmp_path / "bad", knowledge="augmented", seed=0)
    assert not (tmp_path / "bad").exists()


def test_an_output_that_is_the_corpus_or_a_file_is_refused_before_any_work(tmp_path):
    """Into CORPUS itself the released train.spacy was overwritten (a second run
    augmenting augmented posts); a file as OUTPUT, or above it, was a traceback."""
    corpus = write_corpus(tmp_path / "released")
    released = (corpus / "train.spacy").read_bytes()
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "train.spacy").symlink_to(corpus / "train.spacy")
    for output in (corpus, tmp_path / "released" / ".." / "released", tmp_path / "linked"):
        with pytest.raises(typer.BadParameter, match="is CORPUS's own train.spacy"):
            augment_knowledge.main(corpus, output, knowledge="augmented", seed=0)
    assert (corpus / "train.spacy").read_bytes() == released
    (tmp_path / "a_file").write_text("")
    for output in (tmp_path / "a_file", tmp_path / "a_file" / "below"):
        with pytest.raises(typer.BadParameter, match=f"^{tmp_path / 'a_file'} is a file"):
            augment_knowledge.main(corpus, output, knowledge="released", seed=0)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a_file", "linked", "released"]
    assert sorted(path.name for path in (tmp_path / "linked").iterdir()) == ["train.spacy"]
