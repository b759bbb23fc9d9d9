"""Run `nlp.pipe(..., n_process=N)` over posts in a fresh process and dump the results.

    python npipe_worker.py PIPELINE POSTS_JSON OUT_JSON --batch-sizes 1,8,64
        [--n-process 2] [--one-thread] [--warm-up] [--watchdog SECONDS] [--limit N]

Used by test_mixed_batches.py and bench/bench_reliability.py. The pipeline
may hold ita_context with the tests' cheap extractor, registered by importing
mixed_batches. --one-thread calls torch.set_num_threads(1) before anything
else (the user-side workaround for the fork deadlock, see docs/reliability.md);
--warm-up runs the pipeline once in the parent before forking (as any script
that also tags single docs does). The watchdog kills the workers and exits
with status 3 if one pipe call takes longer than SECONDS.
"""
import argparse
import json
import multiprocessing
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/: mixed_batches, and the helpers it imports


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pipeline")
    parser.add_argument("posts")
    parser.add_argument("out")
    parser.add_argument("--batch-sizes", default="8")
    parser.add_argument("--n-process", type=int, default=2)
    parser.add_argument("--one-thread", action="store_true")
    parser.add_argument("--warm-up", action="store_true")
    parser.add_argument("--watchdog", type=float, default=0)
    parser.add_argument("--limit", type=int, default=0, help="only the first N posts")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.one_thread:
        import torch

        torch.set_num_threads(1)
    import warnings

    import spacy

    # (also registers the cheap extractor and the ita_context factory)
    from mixed_batches import doc_summary, docs_from_posts

    warnings.simplefilter("ignore")  # ita_context warns about each broken image
    nlp = spacy.load(args.pipeline)
    with open(args.posts, encoding="utf8") as file_:
        posts = json.load(file_)
    if args.limit:
        posts = posts[: args.limit]
    if args.warm_up:
        list(nlp.pipe(docs_from_posts(nlp, posts[:4])))
    results = {"n_process": args.n_process, "runs": {}}
    for batch_size in [int(size) for size in args.batch_sizes.split(",")]:
        timer = None
        if args.watchdog:
            def hung(batch_size=batch_size):
                for child in multiprocessing.active_children():
                    child.kill()
                with open(args.out, "w", encoding="utf8") as file_:
                    json.dump({"hung": batch_size, "seconds": args.watchdog}, file_)
                os._exit(3)

            timer = threading.Timer(args.watchdog, hung)
            timer.daemon = True
            timer.start()
        start = time.perf_counter()
        docs = list(nlp.pipe(docs_from_posts(nlp, posts), batch_size=batch_size,
                             n_process=args.n_process))
        seconds = time.perf_counter() - start
        if timer is not None:
            timer.cancel()
        results["runs"][str(batch_size)] = {"seconds": seconds,
                                            "docs": [doc_summary(doc) for doc in docs]}
    with open(args.out, "w", encoding="utf8") as file_:
        json.dump(results, file_)


if __name__ == "__main__":
    main()
