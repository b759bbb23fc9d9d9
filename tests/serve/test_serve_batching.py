"""The batching worker of `spacy_ita serve`: requests that wait together run
as one batch, up to its size, each getting back its own results in order; a
full queue is refused; a failing batch fails only its own requests, and the
worker goes on."""
import asyncio
import math
import threading

import pytest

from spacy_ita.bulk.inputs import Post
from spacy_ita.serve.batching import Batcher, QueueFull


def posts(*texts):
    return [Post(file="request", row=i, where=f"posts[{i}]", text=text)
            for i, text in enumerate(texts)]


class Recorder:
    """A run function that records its batches and can be held at the first one."""

    def __init__(self, fail_on=None):
        self.batches = []
        self.release = threading.Event()
        self.started = threading.Event()
        self.fail_on = fail_on

    def __call__(self, batch, text_view):
        self.started.set()
        self.release.wait(10)
        self.batches.append([post.text for post in batch])
        if self.fail_on in self.batches[-1]:
            raise RuntimeError(f"cannot tag {self.fail_on}")
        return [{"text": post.text.upper(), "text_view": wanted}
                for post, wanted in zip(batch, text_view)]


async def submit_while_held(batcher, recorder, requests):
    """Submit one request, hold the worker on it, queue `requests`, release."""
    first = asyncio.ensure_future(batcher.submit(posts("first"), False))
    await asyncio.get_running_loop().run_in_executor(None, recorder.started.wait, 10)
    waiting = [asyncio.ensure_future(batcher.submit(posts(*texts), wanted))
               for texts, wanted in requests]
    await asyncio.sleep(0.05)  # every request is in the queue
    recorder.release.set()
    return await asyncio.gather(first, *waiting, return_exceptions=True)


def run_batcher(recorder, requests, **settings):
    batcher = Batcher(recorder, **settings)
    batcher.start()
    try:
        return asyncio.run(submit_while_held(batcher, recorder, requests))
    finally:
        batcher.stop()


def test_waiting_requests_run_together_up_to_the_batch_size():
    recorder = Recorder()
    requests = [(("a", "b"), True), (("c",), False), (("d", "e"), False), (("f",), True)]
    results = run_batcher(recorder, requests, max_posts=4, max_wait=0.0)
    # The first request alone; then whole requests until 4 posts are reached.
    assert recorder.batches == [["first"], ["a", "b", "c", "d", "e"], ["f"]]
    assert results == [[{"text": "FIRST", "text_view": False}],
                       [{"text": "A", "text_view": True}, {"text": "B", "text_view": True}],
                       [{"text": "C", "text_view": False}],
                       [{"text": "D", "text_view": False}, {"text": "E", "text_view": False}],
                       [{"text": "F", "text_view": True}]]


def test_a_full_queue_is_refused_and_a_failing_batch_fails_its_own_requests():
    recorder = Recorder(fail_on="b")
    requests = [(("a",), False), (("b",), False), (("c",), False)]
    results = run_batcher(recorder, requests, max_posts=2, max_wait=0.0, queue_size=2)
    assert isinstance(results[3], QueueFull)  # "first" is running, "a" and "b" wait
    assert recorder.batches == [["first"], ["a", "b"]]
    assert results[0] == [{"text": "FIRST", "text_view": False}]
    assert all(isinstance(result, RuntimeError) for result in results[1:3])


async def submit_spaced(batcher, seconds_apart):
    first = asyncio.ensure_future(batcher.submit(posts("a"), False))
    await asyncio.sleep(seconds_apart)
    second = asyncio.ensure_future(batcher.submit(posts("b"), False))
    return await asyncio.gather(first, second)


@pytest.mark.parametrize("seconds_apart,max_gap,expected", [
    (0.3, 0.02, [["a"], ["b"]]),  # nothing came within the gap: the batch ran alone
    (0.05, 1.0, [["a", "b"]]),  # the next came within the gap and the wait
])
def test_a_quiet_queue_ends_the_wait_before_max_wait(seconds_apart, max_gap, expected):
    recorder = Recorder()
    recorder.release.set()
    batcher = Batcher(recorder, max_posts=8, max_wait=2.0, max_gap=max_gap)
    batcher.start()
    try:
        asyncio.run(submit_spaced(batcher, seconds_apart))
    finally:
        batcher.stop()
    assert recorder.batches == expected


async def lone_then_two(batcher):
    await asyncio.gather(*(batcher.submit(posts(text), False) for text in "abcd"))
    await batcher.submit(posts("e"), False)  # alone
    first = asyncio.ensure_future(batcher.submit(posts("f"), False))
    await asyncio.sleep(0.05)
    await asyncio.gather(first, batcher.submit(posts("g"), False))


def test_one_lone_request_does_not_make_the_next_batches_stop_short():
    """The batch stops waiting once it holds as many posts as the recent
    batches; after one lone request it still waits (within the gap) for the
    clients of the larger batches before it."""
    recorder = Recorder()
    recorder.release.set()
    batcher = Batcher(recorder, max_posts=8, max_wait=2.0, max_gap=0.3)
    batcher.start()
    try:
        asyncio.run(lone_then_two(batcher))
    finally:
        batcher.stop()
    assert recorder.batches == [["a", "b", "c", "d"], ["e"], ["f", "g"]]


async def submit_with_deadline(batcher, text):
    return await asyncio.wait_for(batcher.submit(posts(text), False), 10)


def test_a_batcher_nobody_started_starts_at_the_first_request():
    """As in an app mounted inside another, whose lifespan never runs; and
    again after a stop."""
    recorder = Recorder()
    recorder.release.set()
    batcher = Batcher(recorder, max_wait=0.0)
    try:
        assert asyncio.run(submit_with_deadline(batcher, "a")) == [
            {"text": "A", "text_view": False}]
        batcher.stop()
        assert asyncio.run(submit_with_deadline(batcher, "b")) == [
            {"text": "B", "text_view": False}]
    finally:
        batcher.stop()
    assert recorder.batches == [["a"], ["b"]]


async def submit_twice(batcher):
    """One request while the waits are infinite, then one with them back at 0."""
    first, = await asyncio.gather(asyncio.wait_for(batcher.submit(posts("a"), False), 10),
                                  return_exceptions=True)
    batcher.max_wait = batcher.max_gap = 0.0
    return first, await asyncio.wait_for(batcher.submit(posts("b"), False), 10)


def test_a_worker_failure_fails_the_requests_it_holds_and_the_worker_goes_on():
    """An infinite wait made queue.get raise OverflowError in the worker, which
    died: that request and every later one waited for ever."""
    recorder = Recorder()
    recorder.release.set()
    batcher = Batcher(recorder, max_wait=0.0)
    batcher.max_wait = batcher.max_gap = math.inf  # past the checks, as a bug would be
    batcher.start()
    try:
        failure, answer = asyncio.run(submit_twice(batcher))
    finally:
        batcher.stop()
    assert isinstance(failure, RuntimeError)
    assert str(failure).startswith("the server failed on this request's batch: OverflowError")
    assert answer == [{"text": "B", "text_view": False}]
    assert recorder.batches == [["b"]]


def test_settings_are_checked():
    with pytest.raises(ValueError, match="max_posts and queue_size must be at least 1"):
        Batcher(lambda posts, views: [], max_posts=0)
    for wait in (math.inf, math.nan, 1e10, 60.5, -1):
        with pytest.raises(ValueError, match="max_wait and max_gap from 0 to 60 seconds"):
            Batcher(lambda posts, views: [], max_gap=wait)
        with pytest.raises(ValueError, match="max_wait and max_gap from 0 to 60 seconds"):
            Batcher(lambda posts, views: [], max_wait=wait)
