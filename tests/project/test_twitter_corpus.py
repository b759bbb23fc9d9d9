"""The project's Twitter corpus steps on small files made here: PGIM's zip keyed
by image id (scripts/pgim_knowledge.py), and each `context` choice of the
corpus (scripts/twitter_corpus.py), for any dataset folder (twitter2017 too)."""
import zipfile

import pytest
import spacy
import typer
from spacy.tokens import DocBin

import pgim_knowledge
import twitter_corpus
from spacy_ita.corpus.mner import read_captions

POSTS = {  # image id: (tokens with tags, caption, knowledge)
    "101": ([("Kawhi", "B-PER"), ("wins", "O")], "a player", "Kawhi Leonard (person)"),
    "102": ([("Rain", "O"), ("in", "O"), ("Oslo", "B-LOC")], "grey sky", "Oslo (location)"),
    "103": ([("Go", "O"), ("Mets", "B-ORG")], "a stadium", "New York Mets (organization)"),
}


SPLITS = {"train": "1", "valid": "2", "test": "3"}  # a split's image ids start with its digit


def umt_text(split):
    return "".join(f"IMGID:{SPLITS[split]}{i}\n" + "".join(f"{w}\t{t}\n" for w, t in POSTS[i][0])
                   + "\n" for i in POSTS)


def inline_text(ids):
    """PGIM's layout: no IMGID lines, the knowledge after <EOS>, tagged X."""
    return "".join("".join(f"{w}\t{t}\n" for w, t in POSTS[i][0]) + "<EOS>\tX\n"
                   + "".join(f"{w}\tX\n" for w in POSTS[i][2].split()) + "\n" for i in ids)


@pytest.fixture
def dataset(tmp_path):
    """A twitter2017-like folder: every split holds the three posts."""
    folder = tmp_path / "twitter2017"
    folder.mkdir()
    for split, digit in SPLITS.items():
        (folder / f"{split}.txt").write_text(umt_text(split), encoding="utf8")
    (folder / "blip2_captions.txt").write_text("".join(
        f"{digit}{i}.jpg :{caption}\n" for digit in SPLITS.values()
        for i, (_, caption, _) in POSTS.items()), encoding="utf8")
    return folder


def test_pgim_zip_is_keyed_by_image_id_and_skips_a_missing_post(dataset, tmp_path):
    archive = tmp_path / "pgim.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("2017/train.txt", inline_text(["101", "102", "103"]))
        zipped.writestr("2017/valid.txt", inline_text(["101", "103"]))  # 102 is missing
        zipped.writestr("2017/test.txt", inline_text(["103"]))
    output = dataset / "pgim_knowledge.txt"
    pgim_knowledge.main(archive, dataset, output)
    lines = output.read_text(encoding="utf8").splitlines()
    assert len(lines) == 6
    assert read_captions(output) == {
        f"{SPLITS[split]}{i}": POSTS[i][2]
        for split, ids in (("train", ["101", "102", "103"]), ("valid", ["101", "103"]),
                           ("test", ["103"])) for i in ids}


def test_a_malformed_pgim_line_or_a_missing_umt_file_is_named(dataset, tmp_path, capsys):
    archive = tmp_path / "pgim.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("2017/train.txt", inline_text(["101"]))
        zipped.writestr("2017/valid.txt", inline_text(["101"]))
        zipped.writestr("2017/test.txt", "IMGID:1\nKawhi\tB-PER\textra\tcolumn\n")
    output = dataset / "pgim_knowledge.txt"
    with pytest.raises(SystemExit):
        pgim_knowledge.main(archive, dataset, output)
    assert f"{archive}:2017/test.txt:2" in " ".join(capsys.readouterr().out.split())
    (dataset / "valid.txt").unlink()
    with pytest.raises(SystemExit):
        pgim_knowledge.main(archive, dataset, output)
    assert f"{dataset / 'valid.txt'} not found" in " ".join(capsys.readouterr().out.split())
    assert not output.exists()


def test_pgim_keeps_a_copy_in_place_when_the_zip_is_absent(dataset, tmp_path):
    output = dataset / "pgim_knowledge.txt"
    output.write_text("1101.jpg :Kawhi (person)\n", encoding="utf8")
    pgim_knowledge.main(tmp_path / "absent.zip", dataset, output)
    assert output.read_text(encoding="utf8") == "1101.jpg :Kawhi (person)\n"
    output.unlink()
    with pytest.raises(SystemExit):
        pgim_knowledge.main(tmp_path / "absent.zip", dataset, output)


@pytest.mark.parametrize("context, fields", [("captions", {"captions"}),
                                             ("knowledge", {"knowledge"}),
                                             ("all", {"captions", "knowledge"})])
def test_each_context_choice_gives_the_corpus_those_fields(dataset, tmp_path, context, fields):
    (dataset / "pgim_knowledge.txt").write_text("".join(
        f"{digit}{i}.jpg :{knowledge}\n" for digit in SPLITS.values()
        for i, (_, _, knowledge) in POSTS.items()), encoding="utf8")
    out = tmp_path / "corpus"
    twitter_corpus.main(dataset, out, context=context)
    vocab = spacy.blank("en").vocab
    for split, name in (("train", "train"), ("valid", "dev"), ("test", "test")):
        docs = list(DocBin().from_disk(out / f"{name}.spacy").get_docs(vocab))
        assert [doc._.image_id for doc in docs] == [f"{SPLITS[split]}{i}" for i in POSTS]
        for doc in docs:
            found = {field for field, items in doc._.visual_context.to_dict().items() if items}
            assert found == fields
            assert [ent.text for ent in doc.ents] == [
                w for w, t in POSTS[doc._.image_id[1:]][0] if t != "O"]


def test_a_missing_context_file_or_unknown_choice_is_refused(dataset, tmp_path):
    with pytest.raises(typer.BadParameter, match="pgim_knowledge.txt not found"):
        twitter_corpus.main(dataset, tmp_path / "corpus", context="knowledge")
    with pytest.raises(typer.BadParameter, match="choose from"):
        twitter_corpus.main(dataset, tmp_path / "corpus", context="ocr")
