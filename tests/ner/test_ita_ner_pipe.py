"""ita_ner as a spaCy pipe, held to the checks spaCy's own components are (as
spacy-experimental's coref tests do): add_pipe with the defaults, a pipe used
before it is initialised, and labels before and after initialise."""
import pytest
import spacy

from helpers import check_tagged, make_examples, make_nlp
from spacy_ita.ner.encoders import BUNDLED_ENCODER

TEXT = "Phoenix beat Denver tonight"


def test_add_pipe_with_the_defaults():
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("ita_ner")
    assert nlp.pipe_names == ["ita_ner"]
    assert ner.labels == ()
    config = nlp.get_pipe_config("ita_ner")
    assert config["model"]["name"] == {"@misc": BUNDLED_ENCODER}
    assert (config["tag_scheme"], config["view"], config["use_context"]) == ("BIO", "auto", True)
    assert "doc.ents" in nlp.get_pipe_meta("ita_ner").assigns


def test_a_pipe_that_is_not_initialised_says_so(tiny_encoder):
    nlp = make_nlp(tiny_encoder)
    with pytest.raises(ValueError, match=r"not initialised: call nlp\.initialize\(\)"):
        nlp(TEXT)


def test_an_initialised_pipe_tags(tiny_encoder):
    nlp = make_nlp(tiny_encoder)
    nlp.initialize(lambda: make_examples(nlp))
    assert nlp.get_pipe("ita_ner").labels == ("LOC", "ORG", "PER")
    check_tagged(nlp(TEXT), TEXT)
    check_tagged(nlp(""), "")


def test_labels_added_before_initialise_size_the_tagger(tiny_encoder):
    nlp = make_nlp(tiny_encoder)
    ner = nlp.get_pipe("ita_ner")
    assert ner.add_label("PER") == 1
    assert ner.add_label("PER") == 0
    assert ner.add_label("LOC") == 1
    assert ner.labels == ("PER", "LOC")
    ner.initialize(lambda: [], nlp=nlp, labels=ner.label_data)
    assert ner.tags == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    check_tagged(nlp(TEXT), TEXT, ner.labels)


def test_add_label_after_initialise_is_refused(tiny_encoder):
    nlp = make_nlp(tiny_encoder)
    nlp.initialize(lambda: make_examples(nlp))
    ner = nlp.get_pipe("ita_ner")
    assert ner.add_label("PER") == 0  # known: nothing to change
    with pytest.raises(ValueError, match="Cannot add label 'FAC' to an initialised ita_ner"):
        ner.add_label("FAC")
    assert ner.labels == ("LOC", "ORG", "PER")


@pytest.mark.parametrize("label", ["", " PER", "-PER", 3])
def test_an_invalid_label_is_named(label):
    ner = spacy.blank("en").add_pipe("ita_ner")
    with pytest.raises(ValueError, match=f"Invalid entity label {label!r}"):
        ner.add_label(label)
