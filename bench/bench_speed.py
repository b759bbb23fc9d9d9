"""Speed and memory of ita_ner against spaCy's stock transformer NER and the bare encoder.

All systems run in one process, interleaved, on the same posts and batch size;
medians over repeats are reported as ratios, since absolute times on a shared
machine drift. Models are freshly initialised (speed does not depend on the
weights), so no training is needed. The posts carry BLIP-2 captions and PGIM's
knowledge; each cross-modal view reads the context fields it names. The token
features (ItaTagger.v2, the default) are timed against v1, which has none, on
the same inputs: what they cost on top of the sequence.

With --precisions, the bench compares ita_ner's encoder in fp32 and in bf16
autocast instead (interleaved in the same way), against the stock NER (fp32),
and trains a pipeline briefly to count how often both precisions find the
same entities on the posts.

    python bench/bench_speed.py --quick            # minutes
    python bench/bench_speed.py --output bench/results/speed.json
    OMP_NUM_THREADS=1 python bench/bench_speed.py --precisions --posts 300 \
        --output bench/results/speed_bf16.json
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import spacy  # noqa: E402
import torch  # noqa: E402
from spacy.scorer import get_ner_prf  # noqa: E402
from spacy.training import Example  # noqa: E402
from thinc.api import Adam, fix_random_seed, warmup_linear  # noqa: E402

from spacy_ita.corpus.mner import read_mner  # noqa: E402
from spacy_ita.ner.encoders import bundled_encoder  # noqa: E402
from spacy_ita.ner.precision import native_bf16  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "twitter2015"
STOCK_CONFIG = REPO / "project" / "configs" / "stock_ner.cfg"
ITA_CONFIG = REPO / "project" / "configs" / "ita.cfg"
LABELS = ["LOC", "ORG", "OTHER", "PER"]
PRECISIONS = ("fp32", "bf16")
# The updates timed in each precision, and their ita_ner settings.
UPDATES = {"text-only update": {"use_context": False},
           "CVA update, knowledge": {"context_order": ["knowledge"]}}


def load_posts(path: Path, limit: int):
    """Posts with their captions and knowledge (from the same folder) as context."""
    if not path.exists():
        sys.exit(f"Data not found: {path} (see ../shared/data/README.md)")
    docs = list(read_mner(path, path.parent / "blip2_captions.txt",
                          knowledge_path=path.parent / "pgim_knowledge.txt"))
    return docs[:limit] if limit else docs


def ita_pipeline(architecture=None, examples=(), **config):
    """An ita_ner pipeline with the default config, or another architecture
    (e.g. "spacy-ita.ItaTagger.v1", no token features); examples give v2 its
    mention vocabulary."""
    if architecture is not None:
        config["model"] = {"@architectures": architecture, "name": bundled_encoder()}
    nlp = spacy.blank("en")
    nlp.add_pipe("ita_ner", config=config)
    nlp.get_pipe("ita_ner").initialize(lambda: list(examples), nlp=nlp, labels=LABELS)
    return nlp


def stock_pipeline():
    config = spacy.util.load_config(STOCK_CONFIG)
    nlp = spacy.util.load_model_from_config(config, auto_fill=True)
    examples = [Example.from_dict(nlp.make_doc("Paris"), {"entities": [(0, 5, label)]}) for label in LABELS]
    nlp.initialize(lambda: examples)
    return nlp


def annotate(nlp, docs, batch_size, view=None, fields=None, precision=None, tagged=None):
    """Seconds to tag copies of the docs in one view, reading the context
    `fields`, with the encoder in `precision`; the tagged copies go into `tagged`."""
    settings = {"view": view, "context_order": fields and list(fields), "precision": precision}
    for setting, value in settings.items():
        if value is not None:
            setattr(nlp.get_pipe("ita_ner"), setting, value)
    copies = [doc.copy() for doc in docs]
    for doc in copies:
        doc.ents = []
    start = time.perf_counter()
    for doc in nlp.pipe(copies, batch_size=batch_size):
        if tagged is not None:
            tagged.append(doc)
    return time.perf_counter() - start


def interleaved_words_per_second(systems, n_words, repeats):
    """Words per second of each system (a function timing one run): one
    warm-up run each, then `repeats` rounds in which the systems take turns;
    medians, so that drift of a shared machine hits all of them alike."""
    for run in systems.values():
        run()
    times = {name: [] for name in systems}
    for _ in range(repeats):
        for name, run in systems.items():
            times[name].append(run())
    return {name: n_words / statistics.median(t) for name, t in times.items()}


def bare_encoder(docs, batch_size):
    """The floor: the same encoder's forward pass over the same word pieces, text only."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundled_encoder())
    model = AutoModel.from_pretrained(bundled_encoder()).eval()
    words = [[token.text for token in doc] for doc in docs]

    def run():
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(words), batch_size):
                batch = tokenizer(words[i : i + batch_size], is_split_into_words=True,
                                  padding=True, truncation=True, return_tensors="pt")
                model(**batch)
        return time.perf_counter() - start

    return run


def project_optimizer(learn_rate):
    """Adam as the project's training config sets it (weight decay, clipping,
    weight averages or none), with `learn_rate` for its schedule: an update
    timed here does the optimizer work a training update does."""
    settings = dict(spacy.util.load_config(ITA_CONFIG)["training"]["optimizer"])
    for key in ("@optimizers", "learn_rate"):
        settings.pop(key)
    return Adam(learn_rate, **settings)


def update_speeds(pipelines, examples, batch_size, steps):
    """Posts per second per update for each pipeline: the pipelines take turns
    on the same batches, after one warm-up update each; medians over steps."""
    optimizers = {name: project_optimizer(1e-5) for name in pipelines}
    times = {name: [] for name in pipelines}
    for step in range(steps + 1):
        batch = examples[(step * batch_size) % len(examples):][:batch_size]
        for name, nlp in pipelines.items():
            start = time.perf_counter()
            nlp.update(batch, sgd=optimizers[name])
            if step > 0:
                times[name].append(time.perf_counter() - start)
    return {name: batch_size / statistics.median(t) for name, t in times.items()}


def token_floor(nlp, docs, batch_size):
    """What a CVA update would cost relative to a text-only one if time were
    proportional to the padded encoder positions of each batch: 1 + cross/text,
    with the context as the pipeline's ita_ner renders it."""
    from transformers import AutoTokenizer

    ner = nlp.get_pipe("ita_ner")
    tokenizer = AutoTokenizer.from_pretrained(bundled_encoder())
    text_positions = cross_positions = 0
    for i in range(0, len(docs), batch_size):
        batch = docs[i : i + batch_size]
        words = [[token.text for token in doc] for doc in batch]
        cross_inputs = [ner.cross_input(doc, i) for i, doc in enumerate(batch)]
        contexts = [item.context if item is not None else "" for item in cross_inputs]
        text = tokenizer(words, is_split_into_words=True, padding=True)["input_ids"]
        cross = tokenizer(words, [context.split() for context in contexts],
                          is_split_into_words=True, padding=True)["input_ids"]
        text_positions += len(text) * len(text[0])
        cross_positions += len(cross) * len(cross[0])
    return 1 + cross_positions / text_positions


def peak_rss_of_annotation(path: Path, n_posts: int, batch_size: int) -> float:
    """Peak resident memory (MiB) of a fresh process that annotates the posts."""
    code = (
        "import os, resource, sys; sys.path.insert(0, %r); import bench_speed as b; "
        "docs = b.load_posts(b.Path(%r), %d); "
        "b.annotate(b.ita_pipeline(precision='fp32'), docs, %d); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    ) % (str(Path(__file__).parent), str(path), n_posts, batch_size)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 posts, 3 repeats")
    parser.add_argument("--posts", type=int, default=0, help="number of test posts (0: all)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--data", type=Path, default=DATA, help="the Twitter-2015 folder")
    parser.add_argument("--precisions", action="store_true",
                        help="compare ita_ner's encoder in fp32 and bf16 instead")
    parser.add_argument("--agreement-steps", type=int, default=150,
                        help="with --precisions: updates of 16 training posts before "
                             "comparing the entities of both precisions")
    parser.add_argument("--output", type=Path, help="write the results as JSON")
    args = parser.parse_args()
    if args.quick:
        args.posts, args.repeats, args.train_steps = args.posts or 200, 3, 4
    results = precision_comparison(args) if args.precisions else system_comparison(args)
    print(json.dumps(results, indent=2))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2))


def system_comparison(args):
    """ita_ner's views and variants against the stock NER and the bare encoder,
    all in fp32 (--precisions compares ita_ner in bf16)."""
    docs = load_posts(args.data / "test.txt", args.posts)
    n_words = sum(len(doc) for doc in docs)
    examples = [Example(doc.copy(), doc) for doc in docs]
    ita = ita_pipeline(examples=examples, precision="fp32")
    v1 = ita_pipeline("spacy-ita.ItaTagger.v1", precision="fp32")
    stock = stock_pipeline()
    encoder_run = bare_encoder(docs, args.batch_size)
    systems = {
        "ita_ner text view": lambda: annotate(ita, docs, args.batch_size, "text"),
        "ita_ner cross view, captions": lambda: annotate(ita, docs, args.batch_size, "cross", ["captions"]),
        "ita_ner cross view, knowledge": lambda: annotate(ita, docs, args.batch_size, "cross", ["knowledge"]),
        "ita_ner cross view, knowledge + captions": lambda: annotate(
            ita, docs, args.batch_size, "cross", ["knowledge", "captions"]),
        "v1 (no token features) text view": lambda: annotate(v1, docs, args.batch_size, "text"),
        "v1 (no token features) cross view, knowledge": lambda: annotate(
            v1, docs, args.batch_size, "cross", ["knowledge"]),
        "stock spaCy NER": lambda: annotate(stock, docs, args.batch_size),
        "bare encoder forward": encoder_run,
    }
    wps = interleaved_words_per_second(systems, n_words, args.repeats)
    ita.get_pipe("ita_ner").context_order = ["knowledge"]

    training = update_speeds({"ITA with CVA (both views), knowledge": ita_pipeline(
                                  examples=examples, context_order=["knowledge"], precision="fp32"),
                              "text-only": ita_pipeline(examples=examples, use_context=False,
                                                        precision="fp32")},
                             examples, 16, args.train_steps)

    results = {
        "posts": len(docs),
        "words": n_words,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "ita_ner_precision": ita.get_pipe("ita_ner").precision_in_effect,
        "words_per_second": wps,
        "ratios": {
            "text view / stock NER (target >= 0.9)": wps["ita_ner text view"] / wps["stock spaCy NER"],
            "text view / bare encoder (target >= 0.85)": wps["ita_ner text view"] / wps["bare encoder forward"],
            "cross view, knowledge / text view": wps["ita_ner cross view, knowledge"] / wps["ita_ner text view"],
            "token features' share of the cross view, knowledge (target < 0.10)":
                1 - wps["ita_ner cross view, knowledge"] / wps["v1 (no token features) cross view, knowledge"],
            "token features' share of the text view": 1 - wps["ita_ner text view"] / wps["v1 (no token features) text view"],
        },
        "training_posts_per_second": training,
        "cva_update_cost": training["text-only"] / training["ITA with CVA (both views), knowledge"],
        "cva_update_token_floor": token_floor(ita, docs, 16),
        "peak_rss_mib_annotating": peak_rss_of_annotation(args.data / "test.txt", len(docs),
                                                          args.batch_size),
    }
    return results


def precision_comparison(args):
    """ita_ner's encoder in fp32 and in bf16 autocast, interleaved: words per
    second of the text view and of the cross view with knowledge beside the
    stock NER (fp32), posts per second of a text-only and a CVA update, and
    how often both precisions find the same entities after a brief training."""
    docs = load_posts(args.data / "test.txt", args.posts)
    n_words = sum(len(doc) for doc in docs)
    examples = [Example(doc.copy(), doc) for doc in docs]
    ita = ita_pipeline(examples=examples)
    stock = stock_pipeline()
    systems = {"stock spaCy NER (fp32)": lambda: annotate(stock, docs, args.batch_size)}
    for precision in PRECISIONS:
        systems[f"text view, {precision}"] = partial(
            annotate, ita, docs, args.batch_size, "text", precision=precision)
        systems[f"cross view, knowledge, {precision}"] = partial(
            annotate, ita, docs, args.batch_size, "cross", ["knowledge"], precision)
    wps = interleaved_words_per_second(systems, n_words, args.repeats)
    del ita, stock
    updates = update_speeds(
        {f"{update}, {precision}": ita_pipeline(examples=examples, precision=precision, **settings)
         for update, settings in UPDATES.items() for precision in PRECISIONS},
        examples, 16, args.train_steps)
    return {
        "posts": len(docs),
        "words": n_words,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "native_bf16": native_bf16(torch.device("cpu")),
        "words_per_second": wps,
        "ratios": {
            "text view, bf16 / fp32 (target >= 2.0)":
                wps["text view, bf16"] / wps["text view, fp32"],
            "text view, bf16 / stock NER (target >= 2.0)":
                wps["text view, bf16"] / wps["stock spaCy NER (fp32)"],
            "text view, fp32 / stock NER": wps["text view, fp32"] / wps["stock spaCy NER (fp32)"],
            "cross view, knowledge, bf16 / fp32":
                wps["cross view, knowledge, bf16"] / wps["cross view, knowledge, fp32"],
        },
        "training_posts_per_second": updates,
        "update_speedups (bf16 / fp32)": {
            update: updates[f"{update}, bf16"] / updates[f"{update}, fp32"] for update in UPDATES},
        "agreement": precision_agreement(args, docs),
    }


def precision_agreement(args, docs):
    """Train a pipeline for `--agreement-steps` updates of 16 training posts
    (in ita_ner's default precision), then tag the docs in each view in fp32
    and in bf16: the share of docs and of entities both find, and each one's F1."""
    train_docs = load_posts(args.data / "train.txt", 16 * args.agreement_steps)
    train_examples = [Example(doc.copy(), doc) for doc in train_docs]
    fix_random_seed(0)
    nlp = ita_pipeline(examples=train_examples)
    optimizer = project_optimizer(
        warmup_linear(2e-4, max(1, args.agreement_steps // 10), args.agreement_steps))
    start = time.perf_counter()
    for step in range(args.agreement_steps):
        nlp.update(train_examples[16 * step : 16 * step + 16], drop=0.1, sgd=optimizer)
        optimizer.step_schedules()
    results = {"training_posts": len(train_examples),
               "trained_in": nlp.get_pipe("ita_ner").precision_in_effect,
               "training_seconds": time.perf_counter() - start}
    for view in ("text", "auto"):
        tagged = {precision: [] for precision in PRECISIONS}
        for precision in PRECISIONS:
            annotate(nlp, docs, args.batch_size, view, precision=precision, tagged=tagged[precision])
        found = {precision: [{(ent.start, ent.end, ent.label_) for ent in doc.ents} for doc in tagged_docs]
                 for precision, tagged_docs in tagged.items()}
        pairs = list(zip(found["fp32"], found["bf16"]))
        results[f"{view} view"] = {
            "docs with the same entities": sum(a == b for a, b in pairs) / len(pairs),
            "entities found by both / by either": sum(len(a & b) for a, b in pairs)
                                                  / max(1, sum(len(a | b) for a, b in pairs)),
            **{f"ents_f, {precision}": get_ner_prf(
                [Example(doc, gold) for doc, gold in zip(tagged[precision], docs)])["ents_f"]
               for precision in PRECISIONS},
        }
    return results


if __name__ == "__main__":
    main()
