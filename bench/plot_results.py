"""PNG plots for docs/benchmarks.md from the JSON written by the bench scripts.

    python bench/plot_results.py --accuracy bench/results/accuracy.json \
        --speed bench/results/speed.json --out docs/img
"""
import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_accuracy(results: dict, path: Path) -> None:
    systems = results["systems"]
    labels = [f"({key}) {row['name']}, {row['seeds']} seed(s)" for key, row in systems.items()]
    means = [row["f1_mean"] for row in systems.values()]
    errors = [row["f1_std"] for row in systems.values()]
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(labels) + 2))
    ax.barh(labels, means, xerr=errors, capsize=4, color="#4c72b0")
    styles = ["--", ":", "-.", (0, (1, 4))]
    for (name, value), style in zip(results.get("published", {}).items(), styles):
        ax.axvline(value, linestyle=style, color="grey", label=f"published: {name} {value}")
    ax.set_xlim(min(means) - 10, 82)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    ax.invert_yaxis()
    ax.set_xlabel("entity micro F1 on Twitter-2015 test (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_speed(results: dict, path: Path) -> None:
    wps = results["words_per_second"]
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.barh(list(wps), list(wps.values()), color="#55a868")
    ax.invert_yaxis()
    ax.set_xlabel(f"words per second (batch {results['batch_size']}, CPU, median of {results['repeats']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accuracy", type=Path)
    parser.add_argument("--speed", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.accuracy:
        plot_accuracy(json.loads(args.accuracy.read_text()), args.out / "f1_per_system.png")
    if args.speed:
        plot_speed(json.loads(args.speed.read_text()), args.out / "throughput.png")


if __name__ == "__main__":
    main()
