"""How much faster bf16 makes the encoder's operations on this CPU, one torch
thread, fp32 and bf16 interleaved: a linear layer at MiniLM's shapes, and
attention (`scaled_dot_product_attention`, forward and backward) with and
without attention dropout. Where the whole pipeline's bf16/fp32 ratio comes
from: the matmuls bound it from above, and what does not speed up caps it.

    python bench/bench_bf16_ops.py --output bench/results/bf16_ops.json
"""
import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

HIDDEN, INTERMEDIATE, HEADS = 384, 1536, 12  # all-MiniLM-L6-v2
LINEARS = {"query/key/value/output": (HIDDEN, HIDDEN), "intermediate": (HIDDEN, INTERMEDIATE),
           "output": (INTERMEDIATE, HIDDEN)}


def seconds(run, repeats: int) -> float:
    """The fastest of `repeats` timed calls, after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def linear_speedups(rows: int, rounds: int, repeats: int):
    """fp32 / bf16 time of each of MiniLM's linear layers on `rows` tokens."""
    results = {}
    for name, (n_in, n_out) in LINEARS.items():
        x, w = torch.randn(rows, n_in), torch.randn(n_out, n_in)
        xb, wb = x.bfloat16(), w.bfloat16()
        ratios = [seconds(lambda: torch.nn.functional.linear(x, w), repeats)
                  / seconds(lambda: torch.nn.functional.linear(xb, wb), repeats)
                  for _ in range(rounds)]
        bf16 = seconds(lambda: torch.nn.functional.linear(xb, wb), repeats)
        results[name] = {"fp32_over_bf16": statistics.median(ratios),
                         "bf16_gflops": 2 * rows * n_in * n_out / bf16 / 1e9}
    return results


def attention_ms(dtype, dropout: float, batch: int, length: int, backward: bool, repeats: int):
    """Milliseconds of one attention call over a padded batch (half of each row masked)."""
    q, k, v = (torch.randn(batch, HEADS, length, HIDDEN // HEADS, dtype=dtype,
                           requires_grad=backward) for _ in range(3))
    mask = torch.zeros(batch, 1, length, length, dtype=dtype)
    mask[..., length // 2:] = torch.finfo(dtype).min

    def run():
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                               dropout_p=dropout)
        if backward:
            out.sum().backward()

    return 1000 * seconds(run, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=800, help="Tokens a batch (32 posts x 25).")
    parser.add_argument("--batch", type=int, default=16, help="Sequences of the attention batch.")
    parser.add_argument("--length", type=int, default=160, help="Their padded length.")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    attention = {
        f"{dtype}, dropout {dropout}, {'forward+backward' if backward else 'forward'}":
            attention_ms(getattr(torch, dtype), dropout, args.batch, args.length, backward,
                         args.repeats)
        for backward in (False, True) for dropout in (0.0, 0.1)
        for dtype in ("float32", "bfloat16")}
    results = {"linear": linear_speedups(args.rows, args.rounds, args.repeats),
               "attention_ms": attention, "settings": vars(args) | {"output": str(args.output)},
               "load_average": os.getloadavg(), "machine": platform.platform()}
    print(json.dumps(results, indent=2))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf8")


if __name__ == "__main__":
    main()
