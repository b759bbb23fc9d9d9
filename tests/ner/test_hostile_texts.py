"""Issue 6, point 1: hostile post texts through a trained (tiny-encoder) ita_ner.

Every text must come back unchanged, with valid (possibly empty) `doc.ents`
and a B/I/O prediction on every token, alone, in a mixed batch, and with
short or over-long visual context.
"""
import json
import time

import numpy
import pytest

from helpers import check_tagged, trained_pipeline
from spacy_ita.ner.inputs import TaggerInput

LONG_CONTEXT = {"captions": ["a crowd in a stadium " * 400], "ocr_text": ["GO TEAM"] * 50}

TEXTS = {
    "empty": "",
    "single_space": " ",
    "whitespace_only": " \t\n \u3000 \r\n ",
    "single_emoji": "😀",
    "emoji_zwj_sequence": "👩\u200d👩\u200d👧\u200d👦",
    "emoji_flags_and_skin_tones": "🇫🇷🇯🇵 👍🏽👍🏿",
    "zero_width": "Kobe\u200b\u200c\u200dBoston \ufeff\u2060 wins",
    "only_zero_width": "\u200b\u200c\u200d\ufeff",
    "control_chars": "Kobe\x00\x01\x07\x1b[31m Boston\x7f\x9f end",
    "only_control_chars": "\x00\x01\x02",
    "arabic_rtl": "مرحبا بكم في دبي مع كوبي",
    "hebrew_rtl": "שלום ירושלים, קובי",
    "bidi_overrides": "Kobe \u202eenots\u202c \u2067Boston\u2069 \u200f!",
    "mixed_scripts": "Kobe в Москве, 東京で 서울 مرحبا Zürich ΑΘΗΝΑ 😀",
    "urls_and_handles": ("RT @lakers: see https://t.co/AbC?x=1&y=2#frag @user_99 #NBA "
                         "www.nba.com/a/b.html"),
    "email_and_cashtag": "mail kobe@example.com about $TSLA and #Boston2024",
    "combining_marks": "Zu\u0308rich e\u0301\u0301\u0301\u0301\u0301 Z\u0336a\u0337l\u0338g\u0335o",
    "nbsp_and_odd_spaces": "\u00a0Kobe\u00a0\u2009Boston\u202f\u205f!",
    "line_separators": "Kobe \u2028 Boston \u2029 Oslo \x85 end",
    "crlf_lines": "Kobe in Boston\r\nFederer in Oslo\r\n",
    "repeated_punctuation": "!!!!!!!!!!!!???????......" * 5,
    "one_5000_char_token": "x" * 5000,
    "one_5000_char_url": "https://example.com/" + "a1" * 2490,
    "1000_emoji": "😀" * 1000,
    "digits_only": "1234567890 " * 10,
}


@pytest.fixture(scope="module")
def nlp(tiny_encoder):
    return trained_pipeline(tiny_encoder)


def labels(nlp):
    return nlp.get_pipe("ita_ner").labels


@pytest.mark.parametrize("context", [None, {"captions": ["a basketball game"]}, LONG_CONTEXT],
                         ids=["no_context", "context", "long_context"])
@pytest.mark.parametrize("name", sorted(TEXTS))
def test_hostile_text_alone(nlp, name, context):
    text = TEXTS[name]
    doc = nlp.make_doc(text)
    doc._.visual_context = context
    doc = nlp(doc)
    check_tagged(doc, text, labels(nlp))


def test_hostile_texts_in_one_mixed_batch_match_single_calls(nlp):
    texts = [TEXTS[name] for name in sorted(TEXTS)] * 2
    docs = []
    for i, text in enumerate(texts):
        doc = nlp.make_doc(text)
        doc._.visual_context = [None, {"captions": ["a game"]}, LONG_CONTEXT][i % 3]
        docs.append(doc)
    single = [nlp(doc.copy()) for doc in docs]
    batched = list(nlp.pipe([doc.copy() for doc in docs], batch_size=16))
    assert [doc.text for doc in batched] == texts
    for doc, text in zip(batched, texts):
        check_tagged(doc, text, labels(nlp))
    ents = lambda ds: [[(e.start_char, e.end_char, e.label_) for e in d.ents] for d in ds]  # noqa
    assert ents(batched) == ents(single)


def test_a_lone_surrogate_is_rejected_by_spacy_before_ita_ner(nlp):
    """A truncated tweet in JSON can hold half an emoji ("\\ud83d"). spaCy's
    tokenizer cannot hash it, so the post is refused with a ValueError
    (UnicodeEncodeError) at make_doc: nothing reaches the model."""
    text = json.loads('"Kobe \\ud83d wins"')
    with pytest.raises(ValueError, match="surrogates not allowed"):
        nlp(text)


def emissions(nlp, doc, context=None):
    ner = nlp.get_pipe("ita_ner")
    (scores,) = ner.model.predict([TaggerInput(doc, context)])
    return numpy.asarray(scores)


def assert_every_token_scored(nlp, doc, scores):
    """A token that no encoder window covered would get the bias alone."""
    assert scores.shape == (len(doc), len(nlp.get_pipe("ita_ner").tags))
    assert numpy.isfinite(scores).all()
    bias = nlp.get_pipe("ita_ner").model.module.emission.bias.detach().numpy()
    unscored = numpy.flatnonzero(numpy.abs(scores - bias).max(axis=1) < 1e-6)
    assert unscored.size == 0, f"tokens without an encoder vector: {unscored[:10]}"


@pytest.mark.parametrize("n_tokens", [5_000, pytest.param(20_000, marks=pytest.mark.slow)])
def test_long_post_every_token_predicted(nlp, n_tokens):
    """5,000 tokens in CI; 20,000 (about 650 encoder windows, 5-20 s on two
    busy cores) is marked slow and timed by bench/bench_reliability.py."""
    words = ["Kobe", "visits", "Boston", "tonight", "with", "Federer", "!", "😀", "#nba",
             "https://t.co/x"]
    text = " ".join(words[i % len(words)] for i in range(n_tokens))
    doc = nlp.make_doc(text)
    assert len(doc) >= n_tokens
    doc._.visual_context = LONG_CONTEXT  # must be dropped: the post itself needs windows
    start = time.perf_counter()
    tagged = nlp(doc)
    seconds = time.perf_counter() - start
    check_tagged(tagged, text, labels(nlp))
    assert_every_token_scored(nlp, tagged, emissions(nlp, tagged, "a crowd " * 300))
    # 64-position windows: ~n/31 encoder sequences. Linear, a few seconds on 2
    # busy cores; the bound only catches a blow-up (e.g. quadratic windowing).
    assert seconds < 90, f"{n_tokens} tokens took {seconds:.1f}s"


def test_long_token_is_capped_not_dropped(nlp):
    doc = nlp.make_doc("Kobe " + "x" * 5000 + " Boston")
    assert len(doc) == 3
    assert_every_token_scored(nlp, doc, emissions(nlp, doc))
    assert_every_token_scored(nlp, doc, emissions(nlp, doc, "a game"))
