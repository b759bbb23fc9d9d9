"""Issue 6, point 5: data files the converter and readers meet in the wild.

tests/corpus/test_mner.py already covers BOM + CRLF + missing final newline,
tabs inside tokens, malformed tags, orphan I-, any label set, and caption
files. This module covers the gaps: a file truncated at every byte, encodings
other than UTF-8, old-Mac CR line endings, mixed line endings, tags without a
type, truncated or foreign .spacy files for the corpus reader, and a label set
at training or evaluation that differs from the one the model was initialised
with.
"""
import re
import subprocess
import sys

import pytest
import spacy
from spacy.tokens import Doc, DocBin

import spacy_ita  # noqa: F401
from helpers import entities, make_nlp, mner_summary
from spacy_ita.corpus.mner import read_captions, read_mner

READER = "spacy-ita.MultimodalCorpus.v1"
SAMPLE = (
    "IMGID:101\n"
    "RT\tO\n"
    "@user\tO\n"
    ":\tO\n"
    "Zürich\tB-LOC\n"
    "Σπίτι\tI-LOC\n"
    "😀\tO\n"
    "\n"
    "IMGID:102\n"
    "Kobe\tB-PER\n"
    "Bryant\tI-PER\n"
    "東京\tB-LOC\n"
    "\n"
)


def read_or_error(path, vocab):
    """('ok', docs) or ('error', message); any other exception fails the test."""
    try:
        return "ok", mner_summary(read_mner(path, nlp_or_vocab=vocab))
    except ValueError as err:
        return "error", str(err)


def check_truncation(path, vocab, expected, data: bytes, cut: int):
    path.write_bytes(data[:cut])
    status, result = read_or_error(path, vocab)
    if status == "error":
        match = re.match(rf"{re.escape(str(path))}:(\d+): ", result)
        assert match, f"cut at byte {cut}: error without file:line: {result!r}"
        n_lines = data[:cut].count(b"\n") + 1
        assert 1 <= int(match.group(1)) <= n_lines
        return status
    # Whatever was read is the original posts, but for the last one, cut short.
    assert len(result) <= len(expected)
    if result:
        assert result[:-1] == expected[: len(result) - 1]
        image_id, words, _ = result[-1]
        original_id, original_words, _ = expected[len(result) - 1]
        assert image_id == original_id
        assert len(words) <= len(original_words)
        assert words[:-1] == original_words[: len(words) - 1]
        assert original_words[len(words) - 1].startswith(words[-1])
    return status


def char_boundaries(data: bytes):
    text = data.decode("utf-8")
    return sorted({len(text[:i].encode("utf-8")) for i in range(len(text) + 1)})


def test_truncated_at_every_character_boundary(tmp_path, vocab):
    data = SAMPLE.encode("utf-8")
    expected = mner_summary(read_mner(_write(tmp_path / "full.txt", data), nlp_or_vocab=vocab))
    statuses = [check_truncation(tmp_path / "cut.txt", vocab, expected, data, cut)
                for cut in char_boundaries(data)]
    assert "ok" in statuses and "error" in statuses


def test_truncated_inside_a_multibyte_character(tmp_path, vocab):
    data = SAMPLE.encode("utf-8")
    expected = mner_summary(read_mner(_write(tmp_path / "full.txt", data), nlp_or_vocab=vocab))
    inside = sorted(set(range(len(data) + 1)) - set(char_boundaries(data)))
    assert inside
    for cut in inside:
        check_truncation(tmp_path / "cut.txt", vocab, expected, data, cut)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


ENCODINGS = {
    "latin1": SAMPLE.replace("Σπίτι", "Genf").replace("😀", "x").replace("東京", "Köln")
                    .encode("latin-1"),
    "cp1252_smart_quotes": "IMGID:1\n\u201cKobe\u201d\tB-PER\n".encode("cp1252"),
    "utf16_with_bom": SAMPLE.encode("utf-16"),
    "utf16le_no_bom": SAMPLE.encode("utf-16-le"),
    "stray_byte_line_3": b"IMGID:1\nKobe\tB-PER\nwins\xff\tO\n",
}


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_non_utf8_file_is_rejected_with_file_and_line(tmp_path, vocab, name):
    path = _write(tmp_path / f"{name}.txt", ENCODINGS[name])
    with pytest.raises(ValueError) as excinfo:
        list(read_mner(path, nlp_or_vocab=vocab))
    assert re.match(rf"{re.escape(str(path))}:\d+: ", str(excinfo.value)), str(excinfo.value)
    assert "UTF-8" in str(excinfo.value)
    if name == "stray_byte_line_3":
        assert str(excinfo.value).startswith(f"{path}:3: ")


def test_non_utf8_captions_file_is_rejected_with_file_and_line(tmp_path):
    path = _write(tmp_path / "captions.txt", "1.jpg :a café in Zürich\n".encode("latin-1"))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:1: "):
        read_captions(path)


def test_convert_cli_names_file_and_line_of_a_non_utf8_file(tmp_path):
    path = _write(tmp_path / "latin1.txt", ENCODINGS["latin1"])
    result = subprocess.run([sys.executable, "-m", "spacy_ita", "convert", str(path),
                             str(tmp_path / "out.spacy")], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"{path}:5: " in result.stderr


@pytest.mark.parametrize("newline", ["\r", "\r\n", "mixed"])
def test_any_line_ending_reads_the_same(tmp_path, vocab, newline):
    expected = mner_summary(read_mner(_write(tmp_path / "lf.txt", SAMPLE.encode()), nlp_or_vocab=vocab))
    if newline == "mixed":
        lines = SAMPLE.split("\n")
        text = "".join(line + ("\r\n", "\n", "\r")[i % 3] for i, line in enumerate(lines[:-1]))
    else:
        text = SAMPLE.replace("\n", newline)
    path = _write(tmp_path / "other.txt", text.encode())
    assert mner_summary(read_mner(path, nlp_or_vocab=vocab)) == expected


@pytest.mark.parametrize("tag", ["B", "I", "E", "S", "U", "L", "-PER", "O-PER", "B_PER", "BPER",
                                 "B:PER", "I-", "0", "o", "B-\u00a0"])
def test_tags_without_a_type_name_file_and_line(tmp_path, vocab, tag):
    path = _write(tmp_path / "tags.txt", f"IMGID:1\nKobe\tB-PER\nwins\t{tag}\n".encode())
    with pytest.raises(ValueError) as excinfo:
        list(read_mner(path, nlp_or_vocab=vocab))
    assert str(excinfo.value).startswith(f"{path}:3: ")
    assert "unknown tag" in str(excinfo.value)


@pytest.mark.parametrize("post", ["IMGID:1 " + "x" * 2_000_000 + "\nKobe\tB-PER\n",
                                  "IMGID:1\nKobe " + "y" * 1_000_000 + "\tB-PER\n"],
                         ids=["image-id", "token"])
def test_a_megabyte_line_is_named_in_a_short_message(tmp_path, vocab, post):
    """A broken file's line of megabytes was quoted whole in its one-line error."""
    path = _write(tmp_path / "huge.txt", post.encode())
    with pytest.raises(ValueError) as excinfo:
        list(read_mner(path, nlp_or_vocab=vocab))
    message = str(excinfo.value)
    assert message.startswith(f"{path}:") and "whitespace" in message
    assert len(message) < 400 and "characters)" in message


# --- .spacy files for the corpus reader ---------------------------------

def _docbin_bytes(vocab, n=30):
    docs = []
    for i in range(n):
        doc = Doc(vocab, words=["Kobe", "visits", "Boston"])
        doc._.image_id = str(i)
        docs.append(doc)
    return DocBin(store_user_data=True, docs=docs).to_bytes()


@pytest.mark.parametrize("content", ["truncated_half", "truncated_to_10_bytes", "zero_bytes",
                                     "mner_text", "random_bytes"])
def test_bad_spacy_file_is_a_value_error(tmp_path, vocab, content):
    data = {
        "truncated_half": lambda b: b[: len(b) // 2],
        "truncated_to_10_bytes": lambda b: b[:10],
        "zero_bytes": lambda b: b"",
        "mner_text": lambda b: SAMPLE.encode(),
        "random_bytes": lambda b: bytes(range(256)) * 4,
    }[content](_docbin_bytes(vocab))
    path = _write(tmp_path / "train.spacy", data)
    reader = spacy.registry.readers.get(READER)(path)
    with pytest.raises(ValueError):
        list(reader(spacy.blank("en")))


def test_bad_spacy_file_in_a_directory_is_named(tmp_path, vocab):
    good = _docbin_bytes(vocab)
    _write(tmp_path / "a_good.spacy", good)
    bad = _write(tmp_path / "b_broken.spacy", good[: len(good) // 2])
    _write(tmp_path / "c_good.spacy", good)
    reader = spacy.registry.readers.get(READER)(tmp_path)
    with pytest.raises(ValueError) as excinfo:
        list(reader(spacy.blank("en")))
    assert str(bad) in str(excinfo.value)


# --- label sets --------------------------------------------------------------

MNER_WITH_FOO = (
    "IMGID:1\nKobe\tB-PER\nvisits\tO\nBoston\tB-LOC\n\n"
    "IMGID:2\nThe\tO\nLouvre\tB-FOO\nopens\tO\n\n"
)


def _corpus(tmp_path, vocab, text=MNER_WITH_FOO):
    path = _write(tmp_path / "train.txt", text.encode())
    out = tmp_path / "train.spacy"
    DocBin(store_user_data=True, docs=list(read_mner(path, nlp_or_vocab=vocab))).to_disk(out)
    return out


@pytest.mark.parametrize("scheme", ["BIO", "BILUO"])
def test_training_on_a_label_unseen_at_initialize_names_it(tmp_path, tiny_encoder, scheme):
    """Labels fixed in [initialize.components.ita_ner] (as a config would),
    training data from the converter and the multimodal reader with B-FOO."""
    from spacy.training.initialize import init_nlp

    nlp = make_nlp(tiny_encoder, tag_scheme=scheme)
    corpus = _corpus(tmp_path, nlp.vocab)
    config = nlp.config.copy()
    config["initialize"]["components"] = {"ita_ner": {"labels": ["LOC", "ORG", "PER"]}}
    config["corpora"] = {"train": {"@readers": READER, "path": str(corpus)},
                         "dev": {"@readers": READER, "path": str(corpus)}}
    config["training"]["train_corpus"] = "corpora.train"
    config["training"]["dev_corpus"] = "corpora.dev"
    nlp = init_nlp(spacy.util.load_model_from_config(config, auto_fill=True).config)
    examples = list(spacy.registry.readers.get(READER)(corpus)(nlp))
    assert nlp.get_pipe("ita_ner").labels == ("LOC", "ORG", "PER")
    with pytest.raises(ValueError) as excinfo:
        nlp.update(examples)
    message = str(excinfo.value)
    assert "FOO" in message and "Louvre" in message
    assert not isinstance(excinfo.value, (IndexError, KeyError))
    nlp.update(examples[:1])  # the examples without FOO still train


def test_evaluating_on_a_different_label_set_scores_it(tmp_path, tiny_encoder):
    """Dev data with a label the model never had: scored (recall 0 for it),
    not an error; predictions only use the model's labels."""
    from spacy_ita.cli.evaluate import evaluate_views

    nlp = make_nlp(tiny_encoder)
    nlp.config["initialize"]["components"] = {"ita_ner": {"labels": ["LOC", "ORG", "PER"]}}
    nlp.initialize()
    corpus = _corpus(tmp_path, nlp.vocab)
    examples = list(spacy.registry.readers.get(READER)(corpus)(nlp))
    results = evaluate_views(nlp, examples, ["cross", "text"])
    for view in ("cross", "text"):
        assert results[view]["n_gold_entities"] == 3
        per_type = results[view]["ents_per_type"]
        assert per_type.get("FOO", {"r": 0.0})["r"] == 0.0
    predicted = list(nlp.pipe([eg.predicted.copy() for eg in examples]))
    assert {label for doc in entities(predicted) for _, _, label in doc} <= {"LOC", "PER", "ORG"}
