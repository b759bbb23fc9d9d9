"""The page of `spacy_ita serve` in headless Chromium (driven over the
DevTools protocol): it asks for the API key, takes a post and a photo, and
shows the photo's context and the entities of both views, highlighted."""
import json

import httpx
import pytest

from cdp import CHROMIUM, Browser, pick_file
from serve_helpers import API_KEY, data_url, png_bytes

pytest.importorskip("websockets")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")

# The emoji: the server counts characters in code points, the page's JavaScript in UTF-16 units.
TEXT = "\N{FIRE} Phoenix beat Denver tonight"
MARKS = """JSON.stringify([...document.querySelectorAll("#%s mark.entity")]
    .map((mark) => [mark.firstChild.textContent, mark.dataset.label]))"""
# The text shown in a view without the labels inside the marks.
SHOWN = """(() => { const box = document.querySelector("#%s .entities").cloneNode(true);
    box.querySelectorAll("mark span").forEach((label) => label.remove());
    return box.textContent; })()"""


def set_value(browser, element_id, value):
    browser.evaluate(f"document.getElementById({json.dumps(element_id)}).value = "
                     f"{json.dumps(value)}")


def test_the_page_tags_a_post_and_its_photo_in_both_views(server, tmp_path):
    url, _ = server
    red = png_bytes((230, 20, 20))
    expected = httpx.post(f"{url}/annotate", headers={"Authorization": f"Bearer {API_KEY}"},
                          json={"text": TEXT, "text_view": True, "image": data_url(red)}).json()
    with Browser() as browser:
        browser.open(f"{url}/")
        browser.wait_for("document.body.dataset.state === 'ready'")
        assert browser.evaluate("document.getElementById('key-row').hidden") is False
        set_value(browser, "text", TEXT)
        pick_file(browser, "image-file", red, "red.png", "image/png")
        browser.wait_for("!document.getElementById('preview').hidden")
        browser.evaluate("document.getElementById('submit').click()")
        browser.wait_for("document.body.dataset.state === 'error'")
        assert "401" in browser.evaluate("document.getElementById('message').textContent")

        set_value(browser, "api-key", API_KEY)
        browser.evaluate("document.getElementById('submit').click()")
        browser.wait_for("document.body.dataset.state === 'done'")
        cross = json.loads(browser.evaluate(MARKS % "cross"))
        text_only = json.loads(browser.evaluate(MARKS % "text-only"))
        context = browser.evaluate("document.getElementById('context').textContent")
        shown = [browser.evaluate(SHOWN % view) for view in ("cross", "text-only")]
        png = browser.screenshot(tmp_path / "page.png")
    assert cross == [[e["text"], e["label"]] for e in expected["entities"]]
    assert text_only == [[e["text"], e["label"]] for e in expected["text_view"]["entities"]]
    assert cross, "the tiny model finds entities in this post"
    assert context == "Object tagsred"  # what the photo gave, as the page lists it
    assert shown == [TEXT, TEXT]  # the post whole, its entities marked in place
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
