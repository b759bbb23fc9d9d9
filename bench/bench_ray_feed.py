"""How fast Ray Data feeds a pool of actors that do no work, by block layout.

The actors sleep 0.12 s a post (about a 1-CPU worker's time for a post of the
apply benchmark) and use no CPU, so the rate is what Ray Data's scheduling
allows: with a block per post it fed two such actors about 9 posts/s where
16.7 was possible; with a block per batch of posts (one row holding the
batch), as the Ray engine of `apply` now cuts them, about 14 (the start
included). Each block is cut as `apply`'s read does it
(`target_max_block_size = 1`).

    python bench/bench_ray_feed.py --layout post --workers 2
    python bench/bench_ray_feed.py --layout batch --workers 2
"""
import argparse
import time

import numpy
import ray
import ray.data

SECONDS_PER_POST = 0.12


def object_column(values) -> numpy.ndarray:
    column = numpy.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        column[i] = value
    return column


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layout", choices=["post", "batch"], required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--posts", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    per_block = args.layout == "batch"

    def read(_unit):
        posts = [{"id": i, "text": "x" * 200} for i in range(args.posts)]
        for start in range(0, args.posts, args.batch_size):
            batch = posts[start:start + args.batch_size]
            yield {"posts": object_column([batch] if per_block else batch)}

    class Sleeper:
        def __call__(self, block):
            n_posts = sum(len(row) for row in block["posts"]) if per_block else len(block["posts"])
            time.sleep(SECONDS_PER_POST * n_posts)
            return block

    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    dataset = ray.data.from_items([{"unit": 0}], override_num_blocks=1)
    dataset.context.target_max_block_size = 1
    dataset = dataset.map_batches(read, batch_size=1, num_cpus=0).map_batches(
        Sleeper, batch_size=1 if per_block else args.batch_size, num_cpus=1,
        compute=ray.data.ActorPoolStrategy(size=args.workers, max_tasks_in_flight_per_actor=1))
    start, n_posts = time.perf_counter(), 0
    for block in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        n_posts += sum(len(row) for row in block["posts"]) if per_block else len(block["posts"])
    seconds = time.perf_counter() - start
    print(f"{args.layout} blocks, {args.workers} workers: {n_posts} posts in {seconds:.1f} s = "
          f"{n_posts / seconds:.2f} posts/s; the actors' own limit {args.workers / SECONDS_PER_POST:.2f}")


if __name__ == "__main__":
    main()
