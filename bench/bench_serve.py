"""Posts per second of `spacy_ita serve` under load from concurrent clients,
against the same pipeline's `nlp.pipe` in-process on the same posts (timed
from the posts' fields to their entities, as the server's work is: docs made
from text and context, tagged, entities listed).

The server runs as `python -m spacy_ita serve MODEL --no-context` on a free
port of 127.0.0.1 (loopback only). N clients (8 by default) each send their
share of the posts one request at a time, as fast as the answers come; the
server batches what waits into `nlp.pipe` calls. Every request must answer
200 with the entities the in-process run found for that post: a failed,
lost or different answer is counted and makes the script exit 1. In-process
and server rounds alternate (--rounds each), so that a change in the
machine's load hits both; the table gives the median rate of each and the
latency percentiles over all served requests. Since the server cannot batch
more posts than the clients have in flight (clients x posts a request), each
round also times `nlp.pipe` in batches of that size: the gap between it and
the served rate is the cost of serving, the rest is the smaller batches'.
The run stops by itself: each request has a timeout, and the server is
stopped at the end.

The posts are the demo corpus's (assets/demo, train + dev + test, repeated to
--posts), each with its image's lettering as OCR context (no image decoding:
that cost would be the same on both sides). Both sides use --threads torch
threads (1 by default: on a busy machine, idle OpenMP threads of one side that
spin slow the other down, whichever runs second).

    python bench/bench_serve.py MODEL                 # 400 posts, 8 clients, 3 rounds
    python bench/bench_serve.py MODEL --posts 100 --rounds 1 --output bench/results/serve.json
"""
import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import httpx  # noqa: E402
import spacy  # noqa: E402
import srsly  # noqa: E402
import torch  # noqa: E402

import spacy_ita  # noqa: E402,F401
from spacy_ita.visual_context import VisualContext  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo"
REQUEST_TIMEOUT = 120.0  # seconds; a request that takes longer counts as lost


def demo_posts(n_posts: int) -> List[Dict[str, Any]]:
    """`n_posts` request bodies: the demo posts, with their image's lettering as OCR text."""
    rows = [row for split in ("train", "dev", "test")
            for row in srsly.read_jsonl(DEMO / f"{split}.jsonl")]
    bodies = [{"text": row["text"], "context": {"ocr_text": row["image"].get("lines", [])}}
              for row in rows]
    return [bodies[i % len(bodies)] for i in range(n_posts)]


def in_process(nlp, posts: List[Dict[str, Any]], batch_size: int):
    """(seconds, entities per post) of one `nlp.pipe` pass over the posts: the
    same work as the server's from a post's fields to its entities (the doc
    made from the text and context, tagged, its entities listed), without
    HTTP, JSON or batching."""
    start = time.perf_counter()
    docs = []
    for post in posts:
        doc = nlp.make_doc(post["text"])
        doc._.visual_context = VisualContext(**post["context"])
        docs.append(doc)
    entities = [[{"text": e.text, "label": e.label_, "start": e.start_char,
                  "end": e.end_char} for e in doc.ents]
                for doc in nlp.pipe(docs, batch_size=batch_size)]
    return time.perf_counter() - start, entities


class Connection:
    """One keep-alive HTTP/1.1 connection that posts JSON: a load generator
    light enough (as wrk or hey are) not to take the CPU the server needs."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def post(self, path: str, body: Dict[str, Any]) -> Tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        data = json.dumps(body).encode("utf-8")
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(data)}"
                          "\r\n\r\n".encode("ascii") + data)
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
        length = int({k.lower(): v for k, v in headers.items()}.get("content-length", 0))
        return int(head[0].split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def load(url: str, posts: List[Dict[str, Any]], n_clients: int, per_request: int):
    """(seconds, latencies, answers or errors by post index) of `n_clients`
    closed-loop clients sharing the posts, one connection each, sending
    `per_request` posts a request (a batch under "posts" when more than 1)."""
    host, port = url.rsplit("/", 1)[1].split(":")
    requests = [list(range(start, min(start + per_request, len(posts))))
                for start in range(0, len(posts), per_request)]
    answers: Dict[int, Any] = {}
    latencies: List[float] = []

    async def send(connection: Connection, indices: List[int]) -> None:
        body = (posts[indices[0]] if per_request == 1
                else {"posts": [posts[index] for index in indices]})
        status, answer = await asyncio.wait_for(connection.post("/annotate", body),
                                                REQUEST_TIMEOUT)
        if status != 200:
            raise ValueError(f"HTTP {status}: {answer[:200]!r}")
        results = json.loads(answer)
        for index, result in zip(indices, results["results"] if per_request > 1 else [results]):
            answers[index] = result["entities"]

    async def client_loop(mine: List[List[int]]) -> None:
        connection = Connection(host, int(port))
        try:
            for indices in mine:
                sent = time.perf_counter()
                try:
                    await send(connection, indices)
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                        ValueError, KeyError) as err:
                    answers.update({index: f"{type(err).__name__}: {err}" for index in indices})
                    connection.close()
                    connection = Connection(host, int(port))
                latencies.append(time.perf_counter() - sent)
        finally:
            connection.close()

    start = time.perf_counter()
    await asyncio.gather(*(client_loop(requests[i::n_clients]) for i in range(n_clients)))
    return time.perf_counter() - start, latencies, answers


def start_server(model: str, batch_size: int, threads: int) -> Tuple[subprocess.Popen, str]:
    """The server on a free loopback port, once it answers /health, and its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(
        [sys.executable, "-m", "spacy_ita", "serve", model, "--host", "127.0.0.1",
         "--port", str(port), "--no-context", "--batch-size", str(batch_size)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"the server did not start (exit code {process.poll()})")


def percentile(values: List[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run_rounds(nlp, url: str, posts: List[Dict[str, Any]], args) -> Dict[str, Any]:
    """Alternate in-process and served rounds; their rates, the latencies,
    and every answer that was not the in-process run's entities."""
    offered = min(args.batch_size, args.clients * args.posts_per_request)
    rates: Dict[str, List[float]] = {"in_process": [], "offered_batch": [], "served": []}
    latencies, wrong = [], []
    for round_index in range(args.rounds):
        seconds, expected = in_process(nlp, posts, args.batch_size)
        rates["in_process"].append(len(posts) / seconds)
        rates["offered_batch"].append(len(posts) / in_process(nlp, posts, offered)[0])
        seconds, round_latencies, answers = asyncio.run(
            load(url, posts, args.clients, args.posts_per_request))
        rates["served"].append(len(posts) / seconds)
        latencies += round_latencies
        wrong += [(round_index, i, answers.get(i, "lost")) for i in range(len(posts))
                  if answers.get(i) != expected[i]]
        print(f"round {round_index + 1}: in-process {rates['in_process'][-1]:.1f} posts/s "
              f"({rates['offered_batch'][-1]:.1f} in batches of {offered}), served "
              f"{rates['served'][-1]:.1f} posts/s", flush=True)
    return {"offered": offered, "rates": rates, "latencies": latencies, "wrong": wrong}


def summary(measured: Dict[str, Any], args, n_posts: int) -> Dict[str, Any]:
    rates = measured["rates"]
    local, served = statistics.median(rates["in_process"]), statistics.median(rates["served"])
    latencies = measured["latencies"]
    return {
        "model": args.model, "posts": n_posts, "clients": args.clients,
        "posts_per_request": args.posts_per_request, "rounds": args.rounds,
        "batch_size": args.batch_size, "threads": args.threads,
        "in_process_posts_per_second": local, "served_posts_per_second": served,
        "ratio": served / local,
        # Each round's served rate over the in-process one just before it: on a
        # busy machine, neighbours in time share the load better than medians do.
        "median_round_ratio": statistics.median(
            s / l for s, l in zip(rates["served"], rates["in_process"])),
        "offered_batch": measured["offered"],
        "in_process_offered_batch_posts_per_second": statistics.median(rates["offered_batch"]),
        "p50_ms": 1000 * percentile(latencies, 0.5), "p99_ms": 1000 * percentile(latencies, 0.99),
        "failed_or_lost": len(measured["wrong"]),
        "in_process_rates": rates["in_process"], "in_process_offered_batch_rates":
        rates["offered_batch"], "served_rates": rates["served"],
        "load_average": os.getloadavg(), "cpus": os.cpu_count(), "machine": platform.platform(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="A trained pipeline with ita_ner (e.g. the demo's).")
    parser.add_argument("--posts", type=int, default=400)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--posts-per-request", type=int, default=1,
                        help="More than 1: each request is a batch under \"posts\".")
    parser.add_argument("--rounds", type=int, default=3, help="Of each side, alternating.")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="nlp.pipe's in-process, the server's --batch-size.")
    parser.add_argument("--threads", type=int, default=1,
                        help="Torch threads of each side (OMP_NUM_THREADS of the server).")
    parser.add_argument("--output", type=Path, help="Write the results as JSON here.")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    posts = demo_posts(args.posts)
    nlp = spacy.load(args.model)
    process, url = start_server(args.model, args.batch_size, args.threads)
    try:
        in_process(nlp, posts[:16], args.batch_size)  # warm up both sides
        asyncio.run(load(url, posts[:16], args.clients, args.posts_per_request))
        measured = run_rounds(nlp, url, posts, args)
    finally:
        process.terminate()
        process.wait(timeout=60)
    results = summary(measured, args, len(posts))
    print(f"{len(posts)} posts x {args.rounds} rounds, {args.clients} clients, "
          f"{args.posts_per_request} posts a request: in-process "
          f"{results['in_process_posts_per_second']:.1f} posts/s, served "
          f"{results['served_posts_per_second']:.1f} posts/s ({results['ratio']:.2f}x; median "
          f"of the rounds' ratios {results['median_round_ratio']:.2f}x); latency "
          f"p50 {results['p50_ms']:.0f} ms, p99 {results['p99_ms']:.0f} ms; "
          f"{results['failed_or_lost']} failed, lost or different answers. In-process in "
          f"batches of {results['offered_batch']} (the most the clients offer at once): "
          f"{results['in_process_offered_batch_posts_per_second']:.1f} posts/s")
    for round_index, index, answer in measured["wrong"][:5]:
        print(f"  round {round_index + 1}, post {index}: {str(answer)[:200]}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf8")
    return 1 if measured["wrong"] else 0


if __name__ == "__main__":
    sys.exit(main())
