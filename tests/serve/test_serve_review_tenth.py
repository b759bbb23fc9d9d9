"""What one client of `spacy_ita serve` could make everyone pay (review, tenth
session): the pixels its images have the only tagging worker decode, capped per
request from the images' headers; and the bytes its requests hold while they
wait for the worker, capped for all the requests together (503, as a full queue)."""
import asyncio
import io
import threading

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from serve_helpers import data_url, noise_png, png_bytes

from spacy_ita.bulk.inputs import Post
from spacy_ita.cli import app as cli_app
from spacy_ita.serve.app import ServeSettings, create_app
from spacy_ita.serve.batching import Batcher, PostTagger, QueueFull

RED = (230, 20, 20)


def record_decodes(monkeypatch, stand_in=None):
    """The sizes of the images ita_context decodes, in order; `stand_in`, a
    function of the decoded size, replaces the decoding (a large image costs nothing)."""
    from PIL import Image

    from spacy_ita.context import component

    decode, decoded = component.decode_image, []

    def recorded(source, *args):
        if stand_in is None:
            image = decode(source, *args)
            decoded.append(image.size)
            return image
        decoded.append(Image.open(io.BytesIO(source.data)).size)
        return stand_in(decoded[-1])

    monkeypatch.setattr(component, "decode_image", recorded)
    return decoded


def test_a_requests_images_share_a_pixel_budget_read_from_their_headers(
        nlp, image_server, monkeypatch):
    """Each post's image counts, repeats too, in the order of the posts; one
    past the budget is never decoded: its post is tagged without it. An image
    the pipeline refuses undecoded (over --max-image-pixels) costs nothing."""
    decoded = record_decodes(monkeypatch)
    photo, over_one, small = (png_bytes(RED, size) for size in ((60, 40), (80, 60), (40, 40)))
    posts = [{"text": "Sunset over Phoenix", "image": f"{image_server}/red.png"},  # 24x16
             *[{"text": "Sunset over Phoenix", "image": data_url(image)}
               for image in (photo, photo, over_one, small)]]
    with TestClient(create_app(nlp, ServeSettings(
            allow_private_urls=True, max_image_pixels=4_000, max_request_pixels=5_000))) as api:
        answer = api.post("/annotate", json={"posts": posts})
    assert answer.status_code == 200
    fetched, first, repeat, refused, last = answer.json()["results"]
    assert decoded == [(24, 16), (60, 40), (40, 40)]  # 384 + 2,400 + 1,600 pixels
    for result in (fetched, first, last):
        assert result["errors"] == [] and result["context"]["object_tags"] == ["red"]
    assert repeat["errors"] == [
        "posts[2]: image 60x40: the request's images would go over the limit of 5,000 pixels "
        "in all (--max-request-pixels)"]
    assert repeat["context"] is None and repeat["view"] == "text"
    assert "80x60 = 4800 pixels exceeds max_pixels=4000" in refused["errors"][0]


def test_a_small_request_of_one_huge_grey_png_no_longer_holds_the_worker(nlp, monkeypatch):
    """The review's request: a 62 KB PNG of 7000x7000 pixels in one grey level,
    in 24 posts, each ~1.6 s of decoding in the only worker (38 s; another
    client's one text-only post waited 28 s). At the defaults two are decoded."""
    from PIL import Image

    decoded = record_decodes(monkeypatch, stand_in=lambda size: Image.new("RGB", (8, 8), RED))
    grey = io.BytesIO()
    Image.new("L", (7000, 7000), 128).save(grey, format="PNG")
    post = {"text": "Sunset over Phoenix", "image": data_url(grey.getvalue())}
    with TestClient(create_app(nlp)) as api:
        answer = api.post("/annotate", json={"posts": [post] * 24})
    assert answer.status_code == 200
    assert decoded == [(7000, 7000)] * 2  # 98 of the default 100 million pixels
    results = answer.json()["results"]
    assert [result["errors"] for result in results[2:]] == [
        [f"posts[{i}]: image 7000x7000: the request's images would go over the limit of "
         "100,000,000 pixels in all (--max-request-pixels)"] for i in range(2, 24)]


def image_posts(text, image_bytes):
    return [Post(file="request", row=0, where="post", text=text, image=b"x" * image_bytes)]


async def submit_while_the_first_runs(batcher, started, release):
    """Hold the worker on a request of 65 bytes; then requests of 31 and 11
    bytes under a limit of 100; then, the worker released, 11 bytes again."""
    first = asyncio.ensure_future(batcher.submit(image_posts("first", 60), False))
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
    second = asyncio.ensure_future(batcher.submit(image_posts("b", 30), False))
    third = asyncio.ensure_future(batcher.submit(image_posts("c", 10), False))
    await asyncio.sleep(0.05)  # both submitted: the third refused, the second waits
    release.set()
    outcomes = await asyncio.gather(first, second, third, return_exceptions=True)
    return [*outcomes, await batcher.submit(image_posts("d", 10), False)]


def test_the_bytes_waiting_for_the_worker_are_capped():
    """Requests waiting behind a busy worker held their image bytes without
    limit (12 requests of 8 MiB: +500 MiB of RSS; 256 may wait). The request
    running counts until it is answered; one alone over the limit runs."""
    started, release, batches = threading.Event(), threading.Event(), []

    def run(posts, text_view):
        started.set()
        release.wait(10)
        batches.append([post.text for post in posts])
        return [{"text": post.text} for post in posts]

    batcher = Batcher(run, max_posts=1, max_wait=0.0, max_queued_bytes=100)
    batcher.start()
    try:
        first, second, third, later = asyncio.run(
            submit_while_the_first_runs(batcher, started, release))
        alone = asyncio.run(batcher.submit(image_posts("alone", 500), False))
    finally:
        batcher.stop()
    assert isinstance(third, QueueFull)
    assert str(third) == ("the requests waiting or running hold 96 bytes of images and text, "
                          "and this one's 11 would go over the limit of 100 (--max-queued-bytes)")
    assert (first, second, later, alone) == ([{"text": "first"}], [{"text": "b"}],
                                             [{"text": "d"}], [{"text": "alone"}])
    assert batches == [["first"], ["b"], ["d"], ["alone"]]


def test_a_request_over_the_queued_bytes_gets_503_with_retry_after(nlp, monkeypatch):
    noise = noise_png()  # 12 KB: two are over the limit, one is not
    started, release, answers = threading.Event(), threading.Event(), []
    tag = PostTagger.__call__

    def held(self, posts, text_view):
        started.set()
        release.wait(10)
        return tag(self, posts, text_view)

    monkeypatch.setattr(PostTagger, "__call__", held)
    body = {"text": "Rain in London", "image": data_url(noise)}
    with TestClient(create_app(nlp, ServeSettings(max_queued_bytes=len(noise) * 3 // 2))) as api:
        first = threading.Thread(target=lambda: answers.append(api.post("/annotate", json=body)))
        first.start()
        assert started.wait(10)
        refused = api.post("/annotate", json=body)
        release.set()
        first.join(10)
        again = api.post("/annotate", json=body)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert refused.json()["detail"].startswith(
        f"the server is busy: the requests waiting or running hold {len(noise) + 14:,} bytes")
    assert "(--max-queued-bytes); try again shortly" in refused.json()["detail"]
    assert answers[0].status_code == again.status_code == 200  # its bytes were given back
    assert again.json()["errors"] == []


def test_the_command_passes_both_budgets_and_defaults_to_the_apps(model_dir, monkeypatch):
    import uvicorn

    from spacy_ita.serve import app as serve_app

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: served.append(args))
    monkeypatch.setattr(serve_app, "create_app", lambda nlp, settings: settings)
    runner = CliRunner()
    result = runner.invoke(cli_app, ["serve", str(model_dir)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli_app, ["serve", str(model_dir), "--max-request-pixels", "5000",
                                     "--max-queued-bytes", "1000"])
    assert result.exit_code == 0, result.output
    (defaults,), (given,) = served
    assert ((defaults.max_request_pixels, defaults.max_queued_bytes)
            == (ServeSettings.max_request_pixels, ServeSettings.max_queued_bytes)
            == (100_000_000, 256 * 2**20))
    assert (given.max_request_pixels, given.max_queued_bytes) == (5000, 1000)
