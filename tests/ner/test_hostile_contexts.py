"""Issue 6, point 2: hostile visual contexts.

Over-long contexts are cut, never the post; contexts of nothing but
punctuation, emoji or invisible characters work; malformed values of
`Doc._.visual_context` are a TypeError/ValueError naming the doc and the
field, raised by spacy_ita itself (not from deep inside torch or tokenizers).
"""
import json

import pytest

from helpers import check_tagged, trained_pipeline
from spacy_ita import VisualContext
from spacy_ita.ner.inputs import TaggerInput, encode, special_tokens
from spacy_ita.ner.model import sequence_limit


@pytest.fixture(scope="module")
def nlp(tiny_encoder):
    return trained_pipeline(tiny_encoder)


def module_of(nlp):
    return nlp.get_pipe("ita_ner").model.module


@pytest.mark.parametrize("n_tokens", [1, 30, 58, 60, 61, 62, 63, 64, 200])
@pytest.mark.parametrize("pooling", ["first", "mean"])
def test_context_is_cut_never_the_post(nlp, n_tokens, pooling):
    """Around the limit (64 positions, 3 special tokens for a pair, 2 alone):
    the sentence is always encoded whole, and context fills what is left."""
    module = module_of(nlp)
    limit = sequence_limit(module, 512)
    assert limit == 64
    doc = nlp.make_doc(" ".join(["a"] * n_tokens))  # "a" is one word piece
    context = "basketball court " * 5000
    batch = encode(module.tokenizer, [TaggerInput(doc, context)], limit, 16, pooling, "cpu")
    widths = [ids.shape[1] for ids in batch.input_ids]
    assert max(widths) <= limit
    assert sorted(set(batch.pool_target.tolist())) == list(range(n_tokens))
    specials = special_tokens(module.tokenizer)
    prefix = specials.pair[0]
    n_sequences = sum(ids.shape[0] for ids in batch.input_ids)
    if n_tokens <= limit - 2:
        assert n_sequences == 1  # the whole post in one sequence
        ids = batch.input_ids[0][0].tolist()
        a_id = module.tokenizer.convert_tokens_to_ids("a")
        assert ids[len(prefix): len(prefix) + n_tokens] == [a_id] * n_tokens
        n_context = batch.attention_mask[0][0].sum().item() - n_tokens - (
            3 if n_tokens <= limit - 4 else 2)
        assert n_context == max(0, limit - 3 - n_tokens)
    else:
        assert n_sequences > 1  # windows over the post; no context at all


@pytest.mark.parametrize("context", [
    {"captions": ["!!! ... ??? ;-) :: -- ((( )))"]},
    {"object_tags": ["😀", "🏀🏀🏀", "👩\u200d👩\u200d👧"]},
    {"ocr_text": ["\u200b\u200c\u200d\ufeff"]},          # nothing the tokenizer keeps
    {"captions": ["   ", "\t\n"]},                       # blank: no context at all
    {"captions": [""], "object_tags": [], "ocr_text": []},
    {"ocr_text": ["\x00\x01\x02\x7f"]},
    {"captions": ["مرحبا بكم في دبي"], "ocr_text": ["東京 ΑΘΗΝΑ"]},
    {"captions": ["x" * 20000]},                          # one enormous word
    {"object_tags": ["tag"] * 5000},
], ids=["punctuation", "emoji", "zero_width", "blank", "empty", "control", "scripts",
        "giant_word", "many_tags"])
@pytest.mark.parametrize("text", ["Kobe visits Boston", "", "😀", "Kobe " * 100])
def test_odd_contexts_work(nlp, context, text):
    doc = nlp.make_doc(text)
    doc._.visual_context = context
    check_tagged(nlp(doc), text, nlp.get_pipe("ita_ner").labels)


def test_none_context_is_the_text_view(nlp):
    ner = nlp.get_pipe("ita_ner")
    doc = nlp.make_doc("Kobe visits Boston")
    doc._.visual_context = None
    assert ner.inputs([doc]) == [TaggerInput(doc)]
    check_tagged(nlp(doc), "Kobe visits Boston", ner.labels)


class Weird:
    def __repr__(self):
        raise RuntimeError("repr must not be needed for the message")


# (value of Doc._.visual_context, exception type, text the message must contain)
MALFORMED = {
    "int": (42, TypeError, "visual_context"),
    "float_nan": (float("nan"), TypeError, "visual_context"),
    "string": ("a caption", TypeError, "visual_context"),
    "bytes": (b"a caption", TypeError, "visual_context"),
    "list_of_strings": (["a caption"], TypeError, "visual_context"),
    "tuple": (("a",), TypeError, "visual_context"),
    "set": ({"a"}, TypeError, "visual_context"),
    "class_not_instance": (VisualContext, TypeError, "visual_context"),
    "field_none": ({"captions": None}, TypeError, "captions"),
    "field_string": ({"object_tags": "cat"}, TypeError, "object_tags"),
    "field_int": ({"ocr_text": 7}, TypeError, "ocr_text"),
    "item_int": ({"captions": ["ok", 3]}, TypeError, "captions"),
    "item_none": ({"captions": [None]}, TypeError, "captions"),
    "item_nested_list": ({"object_tags": [["cat"]]}, TypeError, "object_tags"),
    "item_dict": ({"ocr_text": [{"text": "x"}]}, TypeError, "ocr_text"),
    "unknown_field": ({"captions": ["ok"], "exif": ["x"]}, ValueError, "exif"),
    "non_string_key": ({1: ["x"]}, ValueError, "1"),
    "msgpack_wrapper_garbage": ({"__spacy_ita_visual_context__": 5}, TypeError, "visual_context"),
    "msgpack_wrapper_bad_field": ({"__spacy_ita_visual_context__": {"captions": 5}}, TypeError,
                                  "captions"),
    "weird_object": (None, TypeError, "visual_context"),  # filled in below
}


def malformed_value(name):
    value, error, field = MALFORMED[name]
    return (Weird() if name == "weird_object" else value), error, field


def assert_raised_by_spacy_ita(excinfo):
    path = str(excinfo.traceback[-1].path)
    assert "spacy_ita" in path, f"raised from {path}, not by spacy_ita's own checks"


@pytest.mark.parametrize("how", ["call", "pipe"])
@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_context_is_a_clear_error(nlp, name, how):
    value, error, field = malformed_value(name)
    docs = [nlp.make_doc("fine post"), nlp.make_doc("Kobe visits Boston")]
    docs[1]._.visual_context = value
    with pytest.raises(error) as excinfo:
        if how == "call":
            nlp(docs[1])
        else:
            list(nlp.pipe(docs, batch_size=8))
    message = str(excinfo.value)
    assert "Kobe visits Boston" in message  # names the doc
    assert "doc 1" in message or how == "call"
    assert field in message
    assert_raised_by_spacy_ita(excinfo)


@pytest.mark.parametrize("mutation", ["append_none", "assign_string", "assign_int_list"])
def test_mutated_visual_context_is_a_clear_error(nlp, mutation):
    doc = nlp.make_doc("Kobe visits Boston")
    context = VisualContext(captions=["a game"])
    if mutation == "append_none":
        context.captions.append(None)
    elif mutation == "assign_string":
        context.captions = "a game"
    else:
        context.object_tags = [1, 2]
    doc._.visual_context = context
    with pytest.raises(TypeError) as excinfo:
        nlp(doc)
    assert "Kobe visits Boston" in str(excinfo.value)
    assert ("captions" in str(excinfo.value)) or ("object_tags" in str(excinfo.value))
    assert_raised_by_spacy_ita(excinfo)


def test_context_dict_with_a_lone_surrogate_is_a_clear_error(nlp):
    doc = nlp.make_doc("Kobe visits Boston")
    doc._.visual_context = {"captions": [json.loads('"a \\ud83d game"')]}
    with pytest.raises(ValueError) as excinfo:
        nlp(doc)
    assert "captions" in str(excinfo.value) and "Kobe visits Boston" in str(excinfo.value)
    assert_raised_by_spacy_ita(excinfo)


def test_visual_context_refuses_a_lone_surrogate():
    with pytest.raises(ValueError, match=r"captions\[0\]"):
        VisualContext(captions=[json.loads('"a \\ud83d game"')])


def test_surrogate_check_does_not_reject_valid_text():
    """What the proposed check must keep accepting: astral characters, the
    private use area and noncharacters are valid text."""
    context = VisualContext(captions=["😀 \U0010fffd \ufdd0 \uffff \U0001f600"])
    assert context.captions[0].encode("utf-8")
