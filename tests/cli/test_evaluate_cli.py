"""`python -m spacy_ita evaluate`: scores as training's dev scorer has them,
and clear refusals or warnings where the data cannot be scored as it is."""
import json
import re
import shutil

import pytest
import spacy
from spacy.tokens import Doc, DocBin
from typer.testing import CliRunner

from helpers import POSTS, trained_pipeline
from spacy_ita import VisualContext
from spacy_ita.cli import app


@pytest.fixture(scope="module")
def pipeline_dir(tiny_encoder, tmp_path_factory):
    path = tmp_path_factory.mktemp("evaluate") / "pipeline"
    trained_pipeline(tiny_encoder).to_disk(path)
    return path


def gold_docs(vocab, posts=POSTS, label=None):
    docs = []
    for text, ents, caption in posts:
        doc = spacy.blank("en", vocab=vocab).make_doc(text)
        doc.ents = [doc.char_span(start, end, label=label or kind) for start, end, kind in ents]
        if caption:
            doc._.visual_context = VisualContext(captions=[caption])
        docs.append(doc)
    return docs


def evaluate(*args):
    result = CliRunner().invoke(app, ["evaluate", *map(str, args)])
    return result.exit_code, " ".join(re.sub(r"\x1b\[[0-9;]*m", "", result.output).split())


def cross_f(pipeline_dir, tmp_path, docs):
    DocBin(docs=docs, store_user_data=True).to_disk(tmp_path / "gold.spacy")
    code, output = evaluate(pipeline_dir, tmp_path / "gold.spacy", "--views", "cross",
                            "-o", tmp_path / "metrics.json")
    assert code == 0, output
    return json.loads((tmp_path / "metrics.json").read_text())["views"]["cross"]["ents_f"]


def test_docs_without_ner_annotation_are_not_scored(pipeline_dir, tmp_path):
    """As spaCy's NER scorer does in training: predictions on a doc whose
    entities were never annotated are no false positives."""
    nlp = spacy.load(pipeline_dir)
    gold = gold_docs(nlp.vocab)
    unannotated = Doc(nlp.vocab, words=[t.text for t in gold[0]])
    assert nlp(unannotated.copy()).ents, "the model must tag it for the test to mean anything"
    assert not unannotated.has_annotation("ENT_IOB")
    assert cross_f(pipeline_dir, tmp_path, gold + [unannotated]) == \
        cross_f(pipeline_dir, tmp_path, gold)


def test_data_that_cannot_be_scored_is_refused_or_warned_about(pipeline_dir, tmp_path):
    vocab = spacy.load(pipeline_dir).vocab
    DocBin().to_disk(tmp_path / "empty.spacy")
    code, output = evaluate(pipeline_dir, tmp_path / "empty.spacy")
    assert code == 1 and "empty.spacy holds no docs to score" in output
    DocBin(docs=gold_docs(vocab, label="MISC")).to_disk(tmp_path / "misc.spacy")
    code, output = evaluate(pipeline_dir, tmp_path / "misc.spacy")
    assert code == 0 and "gold labels the model does not predict: MISC" in output
    DocBin(docs=gold_docs(vocab, [(text, [], None) for text, _, _ in POSTS])).to_disk(
        tmp_path / "none.spacy")
    code, output = evaluate(pipeline_dir, tmp_path / "none.spacy")
    assert code == 0 and "has no gold entities: every score is 0" in output
    code, output = evaluate(tmp_path / "no_such_model", tmp_path / "misc.spacy")
    assert code == 1 and "no_such_model" in output and "Traceback" not in output
    code, output = evaluate(pipeline_dir, tmp_path / "misc.spacy", "--component", "ner")
    assert code == 1 and "has no component 'ner' (its components: ita_ner)" in output
    code, output = evaluate(pipeline_dir, tmp_path / "misc.spacy", "-o", tmp_path)
    assert code == 1 and "is a folder" in output


def test_data_without_entity_annotation_is_refused_naming_the_file(pipeline_dir, tmp_path):
    """`extract`'s output, or docs without tokens: spaCy's scorer skips every
    doc and has no score (None), which the table could not print."""
    vocab = spacy.load(pipeline_dir).vocab
    plain = [Doc(vocab, words=text.split()) for text, _, _ in POSTS] + [Doc(vocab, words=[])]
    for name, docs in (("plain", plain), ("no_tokens", plain[-1:])):
        DocBin(docs=docs).to_disk(tmp_path / f"{name}.spacy")
        code, output = evaluate(pipeline_dir, tmp_path / f"{name}.spacy")
        assert code == 1, output
        assert f"{tmp_path / name}.spacy has no entity annotation in any doc" in output
        assert "pass gold docs, e.g. from `python -m spacy_ita convert`" in output


def test_no_gold_and_no_predicted_entities_print_no_score(pipeline_dir, tmp_path):
    nlp = spacy.load(pipeline_dir)
    quiet = [(text, [], None) for text, _, _ in POSTS if not nlp(text).ents]
    assert quiet, "the model must leave some post untagged for the test to mean anything"
    DocBin(docs=gold_docs(nlp.vocab, quiet)).to_disk(tmp_path / "quiet.spacy")
    code, output = evaluate(pipeline_dir, tmp_path / "quiet.spacy", "--views", "text")
    assert code == 0, output
    assert "text - - -" in output


def test_broken_data_a_file_in_the_way_or_no_gpu_stop_with_one_line(pipeline_dir, tmp_path):
    from thinc.util import gpu_is_available

    docs = gold_docs(spacy.load(pipeline_dir).vocab)
    key = next(key for key in docs[0].user_data if key[1] == "visual_context")
    docs[1].user_data[key] = {"captions": 5}
    DocBin(docs=docs, store_user_data=True).to_disk(tmp_path / "broken.spacy")
    code, output = evaluate(pipeline_dir, tmp_path / "broken.spacy")
    assert code == 1 and f"{tmp_path}/broken.spacy: Invalid Doc._.visual_context on doc 1" \
        in output
    DocBin(docs=docs[:1], store_user_data=True).to_disk(tmp_path / "gold.spacy")
    (tmp_path / "afile").write_text("x")
    code, output = evaluate(pipeline_dir, tmp_path / "gold.spacy", "-o",
                            tmp_path / "afile" / "metrics.json")
    assert code == 1 and "cannot make the folder" in output and "File exists" in output
    assert "words/s" not in output  # refused before evaluating
    if not gpu_is_available():
        code, output = evaluate(pipeline_dir, tmp_path / "gold.spacy", "--gpu-id", "0")
        assert code == 1 and "--gpu-id 0: Cannot use GPU" in output


def test_an_output_that_is_what_evaluate_reads_is_refused_before_scoring(pipeline_dir, tmp_path):
    """`-o DATA` replaced the gold docs with the metrics (and `-o MODEL/meta.json`
    the pipeline's meta); a .spacy file under a DATA folder is read as gold next time."""
    model = tmp_path / "pipeline"
    shutil.copytree(pipeline_dir, model)
    gold = tmp_path / "golds" / "gold.spacy"
    gold.parent.mkdir()
    DocBin(docs=gold_docs(spacy.load(model).vocab), store_user_data=True).to_disk(gold)
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    for data, output, what in (
            (gold, gold, f"DATA ({gold})"),
            (gold.parent, gold, f"a .spacy file in DATA ({gold.parent})"),
            (gold.parent, gold.parent / "metrics.spacy", f"a .spacy file in DATA ({gold.parent})"),
            (gold, model / "meta.json", f"a file of the pipeline ({model})")):
        code, output_text = evaluate(model, data, "-o", output)
        assert code == 1, output_text
        assert f"--output {output} is {what}, which evaluate reads" in output_text
        assert "words/s" not in output_text
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before


def test_an_output_beside_what_evaluate_reads_is_written(pipeline_dir, tmp_path, monkeypatch):
    """A new file in the pipeline's folder, a JSON file in a DATA folder and
    `-o metrics.json` with DATA `.` replace nothing evaluate reads: they were refused."""
    model = tmp_path / "pipeline"
    shutil.copytree(pipeline_dir, model)
    golds = tmp_path / "golds"
    golds.mkdir()
    DocBin(docs=gold_docs(spacy.load(model).vocab), store_user_data=True).to_disk(
        golds / "gold.spacy")
    monkeypatch.chdir(golds)
    for data, output in ((golds / "gold.spacy", model / "metrics.json"),
                         (golds, golds / "metrics.json"),
                         (".", "metrics.json")):
        code, output_text = evaluate(model, data, "--views", "text", "-o", output)
        assert code == 0, output_text
        assert json.loads((golds / output).read_text())["data"] == str(data)
