"""`spacy_ita serve`'s API through FastAPI's test client: what /annotate
answers (the same entities as the pipeline in-process, in either view), how
it refuses bad requests (the field named, 4xx), how a bad post is an error in
its result (never a 500), the limits and the API key."""
import io

import pytest
from fastapi.testclient import TestClient

from serve_helpers import data_url, noise_png, png_bytes

from spacy_ita.serve.app import ServeSettings, create_app
from spacy_ita.visual_context import VisualContext

RED = png_bytes((230, 20, 20))


def client(nlp, **settings) -> TestClient:
    return TestClient(create_app(nlp, ServeSettings(**settings)))


@pytest.fixture(scope="module")
def shared_api(model_dir):
    """One app with the default settings for the tests that change nothing."""
    import spacy

    with client(spacy.load(model_dir)) as api:
        yield api


def in_process(nlp, text, image=None, context=None, view=None):
    """(entities, view) of the pipeline run in-process on one post."""
    doc = nlp.make_doc(text)
    doc._.image = image
    if context is not None:
        doc._.visual_context = VisualContext(**context)
    ner = nlp.get_pipe("ita_ner")
    original = ner.view
    ner.view = view or original
    try:
        doc = next(nlp.pipe([doc]))
        used = ner.views([doc])[0]
    finally:
        ner.view = original
    return [{"text": e.text, "label": e.label_, "start": e.start_char, "end": e.end_char}
            for e in doc.ents], used


def test_health_describes_the_model_without_a_key(nlp):
    with client(nlp, api_key="k", model_name="tiny") as api:
        status = api.get("/health").json()
    assert status["model"] == "tiny"
    assert status["labels"] == list(nlp.get_pipe("ita_ner").labels) == ["LOC", "ORG", "PER"]
    assert status["views"] == ["cross", "text"] and status["view"] == "auto"
    assert status["precision"] in ("bf16", "fp32")
    assert status["reads_images"] is True and status["api_key_required"] is True


def test_a_post_with_a_photo_gets_both_views_as_in_process(nlp, model_dir):
    import spacy

    reference = spacy.load(model_dir)
    text = "Phoenix beat Denver tonight"
    with client(nlp) as api:
        answer = api.post("/annotate", json={"text": text, "image": data_url(RED),
                                             "text_view": True})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["context"]["object_tags"] == ["red"]  # read from the photo's pixels
    assert result["errors"] == []
    entities, view = in_process(reference, text, image=RED)
    assert (result["entities"], result["view"]) == (entities, view) == (entities, "cross")
    assert result["text_view"]["entities"] == in_process(reference, text, view="text")[0]


def test_a_batch_keeps_its_order_and_merges_the_callers_context(nlp, model_dir):
    import spacy

    reference = spacy.load(model_dir)
    posts = [{"text": "Sunset over Phoenix", "context": {"captions": ["a desert city skyline"]}},
             {"text": "Jordan scores again"},
             {"text": "Messi joins Miami", "image": data_url(RED),
              "context": {"knowledge": ["Messi (PER)"]}}]
    with client(nlp) as api:
        answer = api.post("/annotate", json={"posts": posts})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["context"] for r in results] == [
        {"captions": ["a desert city skyline"], "object_tags": [], "ocr_text": [], "knowledge": []},
        None,
        {"captions": [], "object_tags": ["red"], "ocr_text": [], "knowledge": ["Messi (PER)"]}]
    for post, result in zip(posts, results):
        image = RED if "image" in post else None
        assert (result["entities"], result["view"]) == in_process(
            reference, post["text"], image, post.get("context"))
        assert "text_view" not in result
    assert [r["view"] for r in results] == ["cross", "text", "cross"]


@pytest.mark.parametrize("body, status, message", [
    (b"{nope", 400, "the body is not valid JSON"),
    (b'["a post"]', 422, "the body must be a JSON object, got an array"),
    (b'{"image": null}', 422, "text: Field required"),
    (b'{"text": "a", "colour": "red"}', 422, "colour: Extra inputs are not permitted"),
    (b'{"posts": [{"text": "a"}, {"text": 3}]}', 422,
     "posts[1].text: Input should be a valid string"),
    (b'{"posts": [{"text": "a", "context": {"captions": "one"}}]}', 422,
     "posts[0].context.captions: Input should be a valid list"),
    (b'{"posts": [{"text": "a"}, {"text": "b", "image": "ftp://x/y.png"}]}', 422,
     "posts[1].image: must be an http(s) URL or a data: URL, got 'ftp://x/y.png'"),
    (b'{"text": "a", "image": "data:image/png;base64,@@@"}', 422,
     "image: the data: URL is not valid base64"),
    (b'{"text": "a", "image": "data:image/png,raw"}', 422, "image: only base64 data: URLs"),
    (b'{"text": "ok \\ud83d"}', 422, "text: contains a lone surrogate at character 3"),
    (b'{"posts": [{"text": "a", "context": {"knowledge": ["\\udc00"]}}]}', 422,
     "posts[0].context.knowledge[0]: contains a lone surrogate"),

    (b'{"text": ' + b"1" * 5_000 + b"}", 400, "the body is not JSON the server reads"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "the body is not JSON the server reads"),
    (b'{"text": "a", "' + b"k" * 10_000 + b'": 1}', 422, "k" * 60 + "...: Extra inputs"),
])
def test_a_bad_request_is_refused_naming_the_field(shared_api, body, status, message):
    answer = shared_api.post("/annotate", content=body,
                             headers={"Content-Type": "application/json"})
    assert answer.status_code == status
    assert message in answer.json()["detail"]


def test_limits_on_the_body_and_the_posts(nlp):
    with client(nlp, max_body_bytes=2_000, max_posts=2) as api:
        too_long = api.post("/annotate", json={"text": "x" * 3_000})
        many = api.post("/annotate", json={"posts": [{"text": "a"}] * 3})
    assert too_long.status_code == 413
    assert "over the limit of 2,000 bytes (--max-body-bytes)" in too_long.json()["detail"]
    assert many.status_code == 422
    assert "posts: 3 posts, over the limit of 2 per request" in many.json()["detail"]


def test_a_post_text_over_the_limit_is_refused_naming_the_post(nlp):
    with client(nlp, max_text_chars=50) as api:
        long_text = api.post("/annotate", json={"posts": [{"text": "a"}, {"text": "x " * 40}]})
        fits = api.post("/annotate", json={"text": "x " * 25})
    assert long_text.status_code == 422
    assert "posts[1].text: 80 characters, over the limit of 50" in long_text.json()["detail"]
    assert fits.status_code == 200


def test_a_post_context_over_the_limit_is_refused_naming_the_post(nlp):
    """Its items together: many short ones cost the worker as much as one long."""
    with client(nlp, max_context_chars=100) as api:
        many = api.post("/annotate", json={"posts": [{"text": "a"}, {"text": "b", "context": {
            "captions": ["a dog"] * 15, "knowledge": ["Rex (PER)"] * 4}}]})
        fits = api.post("/annotate", json={"text": "b", "image": data_url(RED),
                                           "context": {"captions": ["a dog"] * 20}})
    assert many.status_code == 422
    assert ("posts[1].context: 111 characters in all (an item counts as 1 at least), over the "
            "limit of 100 (--max-context-chars)") in many.json()["detail"]
    assert fits.status_code == 200  # merged with the photo's context, repeats dropped
    assert fits.json()["context"] == {"captions": ["a dog"], "object_tags": ["red"],
                                      "ocr_text": [], "knowledge": []}


def test_empty_context_items_count_against_the_limit_and_are_dropped(nlp):
    """Each item costs the worker something, even "": millions of them passed
    any limit, 0 included, and came back in the answer."""
    with client(nlp, max_context_chars=0) as api:
        empty = api.post("/annotate", json={"text": "a", "context": {"captions": [""]}})
    with client(nlp, max_context_chars=10) as api:
        many = api.post("/annotate", json={"text": "a", "context": {"captions": [""] * 11}})
        blank = api.post("/annotate", json={"text": "b", "context": {
            "captions": ["", " ", "a dog", "\n"], "knowledge": ["\t"]}})
    assert empty.status_code == many.status_code == 422
    assert ("context: 1 characters in all (an item counts as 1 at least), over the limit of 0 "
            "(--max-context-chars)") in empty.json()["detail"]
    assert "context: 11 characters in all" in many.json()["detail"]
    assert blank.status_code == 200  # 9 with an item counted as 1 at least
    assert blank.json()["context"] == {"captions": ["a dog"], "object_tags": [], "ocr_text": [],
                                       "knowledge": []}


def test_images_over_the_byte_or_pixel_limit_are_errors_of_their_post(nlp):
    from PIL import Image

    noise = io.BytesIO()
    Image.effect_noise((64, 64), 80).save(noise, format="PNG")  # does not compress
    large = png_bytes((230, 20, 20), size=(120, 120))  # 14,400 pixels in a few bytes
    assert len(noise.getvalue()) > 1_000 > len(large)
    with client(nlp, max_image_bytes=1_000, max_image_pixels=10_000) as api:
        answer = api.post("/annotate", json={"posts": [
            {"text": "Rain in London", "image": data_url(noise.getvalue())},
            {"text": "Rain in London", "image": data_url(large)}]})
    assert answer.status_code == 200
    over_bytes, over_pixels = answer.json()["results"]
    assert over_bytes["errors"] == [f"posts[0]: image bytes is {len(noise.getvalue()):,} bytes, "
                                    "over the limit of 1,000 bytes (--max-image-bytes)"]
    assert over_bytes["context"] is None
    assert len(over_pixels["errors"]) == 1
    assert "120x120 = 14400 pixels exceeds max_pixels=10000" in over_pixels["errors"][0]
    assert over_pixels["context"]["object_tags"] == []
    for result in (over_bytes, over_pixels):
        assert result["entities"] == in_process(nlp, "Rain in London")[0]


def test_image_urls_follow_applys_trust_model(nlp, image_server):
    posts = {"posts": [{"text": "Sunset over Phoenix", "image": f"{image_server}/red.png"},
                       {"text": "Sunset over Phoenix", "image": f"{image_server}/gone.png"}]}
    with client(nlp) as api:
        refused = api.post("/annotate", json=posts).json()["results"]
    for result in refused:
        assert "127.0.0.1, a loopback address: refused (--allow-private-urls allows it)" \
            in result["errors"][0]
        assert result["context"] is None and result["view"] == "text"
    with client(nlp, allow_private_urls=True) as api:
        fetched, missing = api.post("/annotate", json=posts).json()["results"]
    assert fetched["context"]["object_tags"] == ["red"] and fetched["errors"] == []
    assert missing["errors"] == [f"posts[1]: image URL '{image_server}/gone.png': "
                                 "HTTP 404 File not found"]


def test_a_requests_downloads_are_capped_together(nlp, image_server):
    """By default at the body limit: a small body naming many large images held
    them all at once. A declared length counts before the download, so the
    first posts get their whole image and those past the cap an error; without
    one the bytes count as they arrive."""
    noise = noise_png()
    limit = len(noise) * 5 // 2  # room for two downloads, not three
    with client(nlp, allow_private_urls=True, max_body_bytes=limit) as api:
        sized = downloads_read(api, f"{image_server}/noise.png", noise, limit)
        unsized = downloads_read(api, f"{image_server}/unsized/noise.png", noise, limit)
    assert sized == 2 and unsized <= 2


def downloads_read(api, url, image, limit) -> int:
    """How many of 4 downloads of `url` one request read, the errors of the
    others checked; a data: URL of `image` after them is not counted."""
    posts = [{"text": "Rain in London", "image": f"{url}?{i}"} for i in range(4)]
    answer = api.post("/annotate", json={"posts": [
        *posts, {"text": "Rain in London", "image": data_url(image)}]})
    assert answer.status_code == 200
    *downloads, inline = answer.json()["results"]
    assert inline["errors"] == [] and inline["context"]["object_tags"]
    for i, (post, result) in enumerate(zip(posts, downloads)):
        if result["errors"]:
            assert result["errors"] == [
                f"posts[{i}]: image URL '{post['image']}': the request's image downloads would "
                f"go over the limit of {limit:,} bytes in all (--max-download-bytes)"]
            assert result["context"] is None
        else:
            assert result["context"]["object_tags"]
    return sum(not result["errors"] for result in downloads)


def test_a_failing_batch_answers_500_with_what_failed(nlp, monkeypatch):
    from spacy_ita.serve.batching import PostTagger

    def broken(self, posts, text_view):
        raise RuntimeError("a bug in the tagger")

    with TestClient(create_app(nlp), raise_server_exceptions=False) as api:
        monkeypatch.setattr(PostTagger, "__call__", broken)
        failed = api.post("/annotate", json={"text": "Rain"})
        monkeypatch.undo()
        served = api.post("/annotate", json={"text": "Rain"})
    assert failed.status_code == 500
    assert failed.json() == {"detail": "the server failed on this request's batch: "
                                       "RuntimeError: a bug in the tagger"}
    assert served.status_code == 200 and served.json()["errors"] == []


def test_a_post_the_pipeline_fails_on_costs_only_its_result(nlp):
    nlp.max_length = 40  # spaCy refuses longer texts in make_doc
    with client(nlp) as api:
        answer = api.post("/annotate", json={"posts": [{"text": "Rain again in London"},
                                                       {"text": "word " * 20}],
                                             "text_view": True})
    assert answer.status_code == 200
    good, bad = answer.json()["results"]
    assert good["errors"] == [] and good["entities"] == in_process(nlp, "Rain again in London")[0]
    assert bad["entities"] == [] and bad["view"] is None
    assert bad["text_view"] == {"entities": []}  # the same shape as every result
    assert bad["errors"][0].startswith("posts[1]: the pipeline failed on this post: ValueError:")


def test_an_image_without_ita_context_is_reported_and_never_fetched(nlp, image_httpd,
                                                                   image_server):
    """No component reads it: a download would be a request to a URL the client
    chose, and a wait, for nothing."""
    nlp.remove_pipe("ita_context")
    url = f"{image_server}/red.png?without-context"
    with client(nlp, allow_private_urls=True) as api:
        assert api.get("/health").json()["reads_images"] is False
        with pytest.warns(UserWarning, match="ita_ner ignores the image"):  # once, in the log
            results = api.post("/annotate", json={"posts": [
                {"text": "Rain", "image": data_url(RED)},
                {"text": "Rain", "image": url}]}).json()["results"]
    assert [result["errors"] for result in results] == [
        [f"posts[{i}]: the image was not read: the pipeline has no ita_context component "
         "(the server runs with --no-context)"] for i in range(2)]
    assert "/red.png?without-context" not in image_httpd.requested


def test_the_api_key_guards_annotate_but_not_the_page(nlp):
    key = "s3cret-key"
    with client(nlp, api_key=key) as api:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": key},
                        {"Authorization": f"Basic {key}"}):
            answer = api.post("/annotate", json={"text": "Rain"}, headers=headers)
            assert answer.status_code == 401
            assert answer.headers["WWW-Authenticate"] == "Bearer"
            assert key not in answer.text
        ok = api.post("/annotate", json={"text": "Rain"},
                      headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200 and key not in ok.text
        assert api.get("/").status_code == 200
        assert api.get("/health").status_code == 200
        assert key not in api.get("/health").text


def test_the_page_and_its_files_are_served_from_the_package(shared_api):
    page = shared_api.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("static/page.js", "static/page.css"):
        assert asset in page.text
        served = shared_api.get(f"/{asset}")
        assert served.status_code == 200 and "http" not in served.text  # no CDN, no fonts
    assert "http" not in page.text  # nothing loads from elsewhere
    assert shared_api.get("/docs").status_code == 404  # FastAPI's docs would load a CDN
