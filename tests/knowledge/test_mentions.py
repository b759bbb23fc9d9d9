"""Knowledge as mentions: parsing language-model answers, the compact form, alignment."""
import unicodedata

import pytest

from spacy_ita.knowledge.mentions import (
    Mention,
    align_mentions,
    matched_mentions,
    parse_mentions,
    render_mentions,
)

PGIM_ANSWER = (
    "Named entities:1. JayKenMinaj (person/handle)2. George Zimmerman (person)"
    "Reasoning:The sentence mentions JayKenMinaj (a handle) and George Zimmerman."
)


def test_pgim_answer_parses_to_mentions_without_the_reasoning():
    assert parse_mentions(PGIM_ANSWER) == [
        Mention("JayKenMinaj", "person/handle"),
        Mention("George Zimmerman", "person"),
    ]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Named Entity: Holland Roden (Person/Celebrity) Reasoning: x (y)",
         [Mention("Holland Roden", "person/celebrity")]),
        ("Named Entities: 1. NHDems (group) 2. Nashua (location/city)",
         [Mention("NHDems", "group"), Mention("Nashua", "location/city")]),
        ("Kawhi Leonard (person) ; NBA (organization)",
         [Mention("Kawhi Leonard", "person"), Mention("NBA", "organization")]),
        ("Kawhi Leonard ; NBA\nToronto", [Mention("Kawhi Leonard"), Mention("NBA"), Mention("Toronto")]),
        ("The sentence does not contain any named entities, as it is a plain description.", []),
        ("Named entities: None", []),
        ("Tower Bridge (location) ; Tower Bridge (location)", [Mention("Tower Bridge", "location")]),
        # As PGIM's answers on Twitter-2015 have them: HTML entities, brackets in names and types.
        ("Named entities:1. One&amp;Only (brand)2. Bahrain (location)Reasoning: x",
         [Mention("One&amp;Only", "brand"), Mention("Bahrain", "location")]),
        ("1. f(x) (K-pop girl group) 2. Krystal (member of f(x)) 3. Tower(location)",
         [Mention("f(x)", "k-pop girl group"), Mention("Krystal", "member of f(x)"),
          Mention("Tower", "location")]),
        ("1. Obama (person) 2. White House", [Mention("Obama", "person"), Mention("White House")]),
        ("Obama (person), and others", [Mention("Obama", "person")]),
        # PGIM's answers without a header, and with a typed `None`.
        ("1. Miss Alaska MAO (organization) 2. Malie Delgado (person) Reasoning: It names "
         "Miss Alaska (a title).", [Mention("Miss Alaska MAO", "organization"),
                                    Mention("Malie Delgado", "person")]),
        ("Named entities: None (or possibly Cech, a surname)", []),
    ],
)
def test_answer_shapes(text, expected):
    assert parse_mentions(text) == expected


def test_compact_form_round_trips():
    mentions = [Mention("Kawhi Leonard", "person"), Mention("NBA")]
    assert render_mentions(mentions) == "Kawhi Leonard (person) ; NBA"
    assert parse_mentions(render_mentions(mentions)) == mentions


@pytest.mark.parametrize("mentions", [
    [Mention("Reasoning: The Musical", "other"), Mention("Broadway", "loc")],
    [Mention("Biden", "per"), Mention("Named Entity: Recognition", "other"), Mention("Obama")],
    [Mention("None", "per"), Mention("NA", "org")],
])
def test_names_that_look_like_parts_of_an_answer_round_trip(mentions):
    """Read as an answer's reasoning, header or `None`, they were lost: all the
    knowledge, Biden, both mentions."""
    assert parse_mentions(render_mentions(mentions)) == mentions


def spans(words, mentions):
    aligned = align_mentions(words, mentions)
    found, start = [], None
    for i, item in enumerate(aligned + [None]):
        if start is not None and (item is None or item[0]):
            found.append((start, i, aligned[start][1].text))
            start = None
        if item is not None and item[0]:
            start = i
    return found


def test_alignment_ignores_case_spaces_hashtags_and_handles():
    words = "RT @NewYorkMets : Go #NewYorkMets at Citi Field , george zimmerman's".split()
    mentions = [Mention("New York Mets", "team"), Mention("Citifield", "stadium"),
                Mention("George Zimmerman", "person")]
    assert spans(words, mentions) == [
        (1, 2, "New York Mets"), (4, 5, "New York Mets"), (6, 8, "Citifield"),
        (9, 11, "George Zimmerman"),
    ]


def test_alignment_ignores_unicode_forms_width_and_accents():
    """PGIM names the post's `@NikaJaneckova` `Nika Janečková`; a post may hold
    `Beyoncé` decomposed (NFD) or `ＮＡＳＡ` in full width. The spans are the
    post's own tokens, and the mentions keep their text."""
    beyonce = {form: unicodedata.normalize(form, "Beyoncé") for form in ("NFC", "NFD")}
    words = ["@NikaJaneckova", beyonce["NFD"], "and", "ＮＡＳＡ", "in", "Straße"]
    mentions = [Mention("Nika Janečková", "person"), Mention(beyonce["NFC"]), Mention("NASA"),
                Mention("STRASSE")]
    assert spans(words, mentions) == [(0, 1, "Nika Janečková"), (1, 2, beyonce["NFC"]),
                                      (3, 4, "NASA"), (5, 6, "STRASSE")]


def test_alignment_prefers_the_longest_span_and_skips_punctuation_edges():
    words = ["New", "York", "City", "and", "York", "."]
    mentions = [Mention("York"), Mention("New York City"), Mention(".")]
    assert spans(words, mentions) == [(0, 3, "New York City"), (4, 5, "York")]


def test_a_context_that_names_nothing_in_the_post_marks_nothing():
    words = "Sunset over Phoenix".split()
    assert align_mentions(words, [Mention("Kawhi Leonard", "person")]) == [None] * 3
    assert align_mentions(words, []) == [None] * 3


def test_matched_mentions_keeps_those_found_in_order():
    words = "Kawhi joins Toronto".split()
    mentions = [Mention("NBA"), Mention("Toronto", "team"), Mention("Kawhi", "person")]
    assert matched_mentions(words, mentions) == [Mention("Toronto", "team"), Mention("Kawhi", "person")]
    assert matched_mentions(words, [Mention("Lakers")]) == []


def test_a_long_piece_is_read_in_time_that_grows_with_its_length():
    """Knowledge comes from requests (`serve` takes 20,000 context characters a
    post): a 24,000-character piece without a typed item took 13 s, the
    pattern's time growing with its square. Now a fraction of a second."""
    import time

    for text in ("word " * 4000 + "(", "a" * 20000 + " (b", " " * 20000 + "a (b)"):
        start = time.perf_counter()
        parse_mentions(text)
        assert time.perf_counter() - start < 3.0
