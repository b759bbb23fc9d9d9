"""How `mentions_task` reads answers that are cut short, malformed or hostile,
and how `ita_knowledge` keeps such an answer to its own post: the other posts
of the batch get their knowledge, and nothing unusable is cached or read back
from the cache. Also the error of a few-shot examples file that cannot be read."""
import re
import sqlite3

import pytest
import spacy
from spacy.tokens import Doc, DocBin, Span

from fake_llm import FakeLLM, Reply, entities, post_text
from test_llm_knowledge import (api_key, first_word_is_a_person, llm_nlp,  # noqa: F401
                                no_hang, run_posts)  # (api_key, no_hang: autouse)

import spacy_ita  # noqa: F401  (Doc extensions)
from spacy_ita import visual_context
from spacy_ita.bulk import inputs
from spacy_ita.context.cache import ContextCache
from spacy_ita.corpus.readers import CorpusError
from spacy_ita.knowledge import task
from spacy_ita.knowledge.mentions import Mention
from spacy_ita.knowledge.task import AnswerError, make_mentions_task, parse_answer

# A JSON answer cut at max_tokens after some prose.
CUT = 'Sure! Here you go: {"entities": [{"text": "Alice", "type": "PER"}, {"text": "Bo'
# Half of an emoji, as a model escapes it in JSON.
HALF_EMOJI = '{"entities": [{"text": "Obama\\ud83d", "type": "PER"}]}'
DEEP = "[" * 1000 + "]" * 1000
DIGITS = '{"entities": [' + "1" * 5000 + "]}"


@pytest.mark.parametrize("answer,expected", [
    ('{"entities": [{"text": "Obama", "type": "PER"}]}\n\nNote: "RT" is not an entity.',
     [Mention("Obama", "PER")]),
    ('Here they are: [{"text": "Kobe", "type": "PER"}] Hope it helps.', [Mention("Kobe", "PER")]),
    (HALF_EMOJI, [Mention("Obama\ufffd", "PER")]),
    ("Kawhi (person) ; Raptors [2019] (team)",
     [Mention("Kawhi", "person"), Mention("Raptors [2019]", "team")]),
], ids=["json_then_a_remark", "prose_then_a_list", "half_an_emoji", "text_form_with_brackets"])
def test_json_is_read_up_to_its_end_and_half_an_emoji_is_repaired(answer, expected):
    assert parse_answer(answer) == expected


@pytest.mark.parametrize("answer,message", [
    (CUT, "invalid JSON: Unterminated string"),
    ('```json\n{"entities": [{"text": "Alice", "type": "PER"}, {"te', "invalid JSON"),
    ("Here: {'entities': [{'text': 'Alice', 'type': 'PER'}]}", "invalid JSON: Expecting property"),
    ('The post names: {"entities": [{"text": "Alice" "type": "PER"}]}',
     "invalid JSON: Expecting ',' delimiter"),
    ('Here: [{"text": "Alice", "type": "PER"}, {"te', "invalid JSON: Unterminated string"),
    (DEEP, "invalid JSON: maximum recursion depth exceeded"),
    (DIGITS, "invalid JSON: Exceeds the limit"),
], ids=["cut_after_prose", "cut_in_a_fence", "python_dict", "prose_then_broken_json",
        "a_list_cut_after_prose", "deep", "digits"])
def test_an_answer_that_looks_like_json_but_does_not_decode_is_an_answer_error(answer, message):
    with pytest.raises(AnswerError, match=re.escape(message)):
        parse_answer(answer)


# Text answers with brackets, braces or a quoted key that are not JSON. Each was
# read as its bracket alone, or was an error asked again every run.
TEXT_ANSWERS = {
    "quoted_list": ('Named entities: 1. Obama (PER) 2. Chicago (LOC)\n'
                    'Reasoning: the tags ["#vote"] too.', ["Obama (PER) ; Chicago (LOC)"]),
    "empty_list": ("Named entities: 1. Obama (PER)\nReasoning: no image tags [] to use.",
                   ["Obama (PER)"]),
    "list_as_a_name": ('Obama (PER) ; Chicago (LOC) ; [ "a" ] (OTHER)',
                       ['Obama (PER) ; Chicago (LOC) ; [ "a" ] (OTHER)']),
    "nested_list": ("Obama (PER). Reasoning: see [[1]]", ["Obama (PER)"]),
    "braces": ("Named entities: 1. Obama (PER) 2. Chicago (LOC)\n"
               "Reasoning: the {post} names both.", ["Obama (PER) ; Chicago (LOC)"]),
    "braces_in_a_name": ("Barack Obama (PER) ; {Chicago} (LOC)",
                         ["Barack Obama (PER) ; {Chicago} (LOC)"]),
    "a_smiley": ("Named entities: 1. Obama (PER) 2. Smile :-} (OTHER)",
                 ["Obama (PER) ; Smile :-} (OTHER)"]),
    "quoted_key": ("Named entities: 1. Obama (PER) Reasoning: the 'entities' key", ["Obama (PER)"]),
}


@pytest.mark.parametrize("answer,knowledge", TEXT_ANSWERS.values(), ids=TEXT_ANSWERS.keys())
def test_brackets_and_braces_of_a_text_answer_are_text(answer, knowledge):
    assert make_mentions_task().parse(answer) == knowledge


def test_a_text_answer_with_brackets_is_cached_and_not_asked_again(tmp_path):
    cache = tmp_path / "cache.sqlite"
    answers = {name: Reply(answer) for name, (answer, _) in TEXT_ANSWERS.items()}
    with FakeLLM(lambda request: answers[post_text(request)]) as server:
        for _ in range(2):
            docs = run_posts(llm_nlp(server, cache_path=cache), list(TEXT_ANSWERS))
            assert [doc._.visual_context.knowledge for doc in docs] == [
                knowledge for _, knowledge in TEXT_ANSWERS.values()]
            assert [doc._.knowledge_error for doc in docs] == [None] * len(TEXT_ANSWERS)
        assert len(server.requests) == len(TEXT_ANSWERS)


@pytest.mark.parametrize("answer,expected", [
    ("Here are the named entities: Obama (PER) ; Chicago (LOC)",
     [Mention("Obama", "PER"), Mention("Chicago", "LOC")]),
    ("Obama. Reasoning: he is famous", [Mention("Obama")]),
    ("Obama (PER) ; Chicago (LOC) ; Reasoning: both appear",
     [Mention("Obama", "PER"), Mention("Chicago", "LOC")]),
    ('{"entities": ["Obama (PER)", "Chicago. Reasoning: a city"]}',
     [Mention("Obama", "PER"), Mention("Chicago")]),
], ids=["header_after_prose", "reasoning", "reasoning_as_a_piece", "reasoning_in_a_json_string"])
def test_an_answer_is_read_as_an_answer_not_as_stored_knowledge(answer, expected):
    """The compact form's reader keeps a header or `Reasoning:` as part of a name,
    as the extractor stores it; a model's answer drops them."""
    assert parse_answer(answer, ["PER", "LOC"]) == expected


def test_one_pattern_finds_lone_surrogates_in_answers_input_rows_and_contexts():
    assert task.SURROGATE is inputs.SURROGATE is visual_context.SURROGATE


def test_an_answer_cut_at_max_tokens_is_read_only_as_json():
    task = make_mentions_task()
    assert task.parse("Alice (PER) ; Bob (PER)", "stop") == ["Alice (PER) ; Bob (PER)"]
    with pytest.raises(AnswerError, match=r"malformed answer \(cut at max_tokens\): not JSON"):
        task.parse("Alice (PER) ; Bo", "length")
    assert task.parse(entities(("Alice", "PER")) + "\nNote: the", "length") == ["Alice (PER)"]


def test_a_hostile_answer_fails_its_post_alone_and_is_not_cached(tmp_path):
    cache = tmp_path / "cache.sqlite"
    answers = {"deep": Reply(DEEP), "digits": Reply(DIGITS), "emoji": Reply(HALF_EMOJI)}

    def reply(request):
        return answers.get(post_text(request)) or first_word_is_a_person(request)

    texts = ["good", "deep", "digits", "emoji"]
    with FakeLLM(reply) as server:
        docs = run_posts(llm_nlp(server, cache_path=cache, max_answer_chars=6000), texts)
        again = run_posts(llm_nlp(server, cache_path=cache, max_answer_chars=6000), texts)
        assert len(server.requests) == 4 + 2  # only the failed posts ask again
    for run in (docs, again):
        assert [doc._.visual_context.knowledge for doc in run] == [
            ["good (PER)"], [], [], ["Obama\ufffd (PER)"]]
        errors = [doc._.knowledge_error for doc in run]
        assert errors[0] is None and errors[3] is None
        assert "maximum recursion depth" in errors[1] and "Exceeds the limit" in errors[2]


def test_an_unexpected_error_reading_an_answer_fails_its_post_alone(tmp_path, monkeypatch):
    """A task that raises something else than AnswerError, or gives knowledge
    that is not text, fails the post whose answer it read; nothing is cached for it."""
    cache = tmp_path / "cache.sqlite"
    with FakeLLM(first_word_is_a_person) as server:
        nlp = llm_nlp(server, cache_path=cache)
        task = nlp.get_pipe("ita_knowledge").task
        parse = task.parse

        def buggy_parse(answer, finish_reason=None):
            if "Broken" in answer:
                raise KeyError("a bug")
            return ["Emoji\ud83d (PER)"] if "Emoji" in answer else parse(answer, finish_reason)

        monkeypatch.setattr(task, "parse", buggy_parse)
        docs = run_posts(nlp, ["Broken post", "Emoji post", "Fine post"])
    assert [doc._.visual_context.knowledge for doc in docs] == [[], [], ["Fine (PER)"]]
    assert docs[0]._.knowledge_error.endswith("failed: KeyError: 'a bug'")
    assert "lone surrogate" in docs[1]._.knowledge_error
    assert docs[2]._.knowledge_error is None
    assert len(ContextCache(cache)) == 1


def test_a_cached_answer_that_is_not_text_is_a_miss_and_asked_again(tmp_path):
    """A cache row whose knowledge holds half an emoji (another tool's, an
    older version's) cannot be a visual context: it is read as a miss, and
    the answer asked again overwrites it."""
    cache = tmp_path / "cache.sqlite"
    with FakeLLM(first_word_is_a_person) as server:
        run_posts(llm_nlp(server, cache_path=cache), ["Obama speaks"])
        with sqlite3.connect(cache) as db:
            db.execute("UPDATE contexts SET context = ?", ['{"knowledge": ["Obama\\ud83d"]}'])
            key, extractor = db.execute("SELECT image_hash, extractor FROM contexts").fetchone()
        db.close()
        assert ContextCache(cache).get(key, extractor) is None
        docs = run_posts(llm_nlp(server, cache_path=cache), ["Obama speaks", "Biden speaks"])
        assert len(server.requests) == 3
    assert [doc._.visual_context.knowledge for doc in docs] == [["Obama (PER)"], ["Biden (PER)"]]
    assert ContextCache(cache).get(key, extractor) == {"knowledge": ["Obama (PER)"]}


def test_an_answer_cut_at_max_tokens_is_an_error_and_asked_again(tmp_path):
    cache = tmp_path / "cache.sqlite"
    run = {"answers": {"json": Reply(CUT, finish_reason="length"),
                       "text": Reply("Alice (PER) ; Bo", finish_reason="length")}}
    with FakeLLM(lambda request: run["answers"][post_text(request)]) as server:
        cut = run_posts(llm_nlp(server, cache_path=cache), ["json", "text"])
        run["answers"] = {"json": Reply(entities(("Alice", "PER"), ("Bob", "PER"))),
                          "text": Reply("Alice (PER) ; Bob (PER)")}
        whole = run_posts(llm_nlp(server, cache_path=cache), ["json", "text"])
        assert len(server.requests) == 4
    for doc in cut:
        assert doc._.visual_context.knowledge == []
        assert "malformed answer (cut at max_tokens)" in doc._.knowledge_error
    assert [doc._.visual_context.knowledge for doc in whole] == [["Alice (PER) ; Bob (PER)"]] * 2


def test_an_examples_file_that_cannot_be_read_is_named_with_the_doc(tmp_path):
    vocab = spacy.blank("en").vocab
    docs = []
    for text, context in (("Obama here", {"captions": ["a podium"]}),
                          ("Bad one", {"captions": [3]})):
        doc = Doc(vocab, words=text.split())
        doc.ents = [Span(doc, 0, 1, "PER")]
        doc._.visual_context = context
        docs.append(doc)
    bad, truncated = tmp_path / "bad.spacy", tmp_path / "truncated.spacy"
    DocBin(store_user_data=True, docs=docs).to_disk(bad)
    truncated.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(CorpusError, match=f"examples_path: .*{re.escape(str(bad))}: .*doc 1 "):
        make_mentions_task(examples_path=str(bad))
    with pytest.raises(CorpusError,
                       match=f"examples_path: .*{re.escape(str(truncated))}: it is truncated"):
        make_mentions_task(examples_path=str(truncated))
