"""`python -m spacy_ita evaluate`: entity scores of a trained pipeline per inference view.

spaCy's own `spacy evaluate` scores one configuration and reads the data with
the stock reader, which drops the visual context. This command keeps the
context and scores each requested `ita_ner` view on the same posts.
"""
import random
import time
from pathlib import Path
from typing import Dict, List, Optional

import spacy
import typer
from spacy.language import Language
from spacy.scorer import Scorer
from spacy.training import Example
from wasabi import msg

from ..corpus.readers import MultimodalCorpus
from ..files import replace_json
from ..ner.views import VIEWS
from . import app
from .options import same_file


def evaluate_views(
    nlp: Language,
    examples: List[Example],
    views: List[str],
    batch_size: int = 64,
    component: str = "ita_ner",
) -> Dict[str, Dict]:
    """Entity P/R/F (micro and per type), words per second, and how many docs
    were read with their context (`n_cross_docs`, as `Doc._.ita_view` says:
    a doc left without context takes the text view even in "cross") for
    each view."""
    ner = nlp.get_pipe(component)
    original_view = ner.view
    results = {}
    try:
        for view in views:
            ner.view = view
            docs = [eg.predicted.copy() for eg in examples]
            start = time.perf_counter()
            predicted = list(nlp.pipe(docs, batch_size=batch_size))
            seconds = time.perf_counter() - start
            scored = [Example(doc, eg.reference) for doc, eg in zip(predicted, examples)]
            # As spaCy's NER scorer (training's dev score): docs without NER annotation are skipped.
            scores = Scorer.score_spans(scored, "ents",
                                        has_annotation=lambda doc: doc.has_annotation("ENT_IOB"))
            n_words = sum(len(doc) for doc in predicted)
            results[view] = {
                "ents_p": scores["ents_p"],
                "ents_r": scores["ents_r"],
                "ents_f": scores["ents_f"],
                "ents_per_type": scores["ents_per_type"],
                "words_per_second": n_words / seconds if seconds else None,
                "n_docs": len(predicted),
                "n_cross_docs": sum(doc._.ita_view == "cross" for doc in predicted),
                "n_gold_entities": sum(len(eg.reference.ents) for eg in examples),
            }
    finally:
        ner.view = original_view
    return results


def shuffle_contexts(examples: List[Example], seed: int = 0) -> List[Example]:
    """The examples with each post given another post's visual context (a random
    derangement), to measure what a wrong context costs the cross-modal view."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    donor = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}
    shuffled = []
    for i, eg in enumerate(examples):
        doc = eg.predicted.copy()
        doc._.visual_context = examples[donor[i]].predicted._.visual_context
        shuffled.append(Example(doc, eg.reference))
    return shuffled


def check_gold(examples: List[Example], data: Path, labels) -> None:
    """Refuse data without docs or without any entity annotation (which the
    scorer skips, leaving no score); warn where the scores cannot mean much:
    no gold entities, or gold labels the model never predicts."""
    if not examples:
        msg.fail(f"{data} holds no docs to score", exits=1)
    # (spaCy counts a doc without tokens as annotated)
    if not any(len(eg.reference) and eg.reference.has_annotation("ENT_IOB") for eg in examples):
        msg.fail(f"{data} has no entity annotation in any doc (as `extract` writes them), so "
                 "there is nothing to score against; pass gold docs, e.g. from "
                 "`python -m spacy_ita convert`", exits=1)
    gold = {ent.label_ for eg in examples for ent in eg.reference.ents}
    if not gold:
        msg.warn(f"{data} has no gold entities: every score is 0")
    unknown = sorted(gold - set(labels))
    if unknown:
        msg.warn(f"{data} has gold labels the model does not predict: {', '.join(unknown)} "
                 f"(its labels: {', '.join(labels)}); they count as missed")


def check_output(output: Path, data: Path, pipeline: Path) -> None:
    """Refuse, before scoring, an --output that would replace what evaluate
    reads: DATA, a .spacy file under a DATA folder (the reader takes every one)
    or an existing file of the pipeline; any other file beside them is fine."""
    inside = output.resolve().is_relative_to
    if same_file(output, data):
        what = f"DATA ({data})"
    elif data.is_dir() and output.suffix == ".spacy" and inside(data.resolve()):
        what = f"a .spacy file in DATA ({data})"
    elif output.exists() and inside(pipeline.resolve()):
        what = f"a file of the pipeline ({pipeline})"
    else:
        return
    msg.fail(f"--output {output} is {what}, which evaluate reads; write the metrics elsewhere",
             exits=1)


def _cell(value: Optional[float], spec: str) -> str:
    """A table cell; "-" for a score with nothing to count (no gold and no
    predicted entities: spaCy's scorer gives None) or an unmeasured speed."""
    return "-" if value is None else format(value, spec)


@app.command("evaluate")
def evaluate_cli(
    model: str = typer.Argument(..., help="Trained pipeline: a directory or an installed package"),
    data: Path = typer.Argument(..., help=".spacy file (or directory) of gold docs", exists=True),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the metrics as JSON here"),
    views: str = typer.Option("cross,text", "--views", help=f"Comma-separated, of {', '.join(VIEWS)}"),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1),
    gpu_id: int = typer.Option(-1, "--gpu-id", "-g", help="GPU id, or -1 for CPU"),
    precision: Optional[str] = typer.Option(
        None, "--precision", metavar="MODE",
        help="The encoder's: auto (bf16 where native), bf16 or fp32 (default: the pipeline's)"),
    component: str = typer.Option("ita_ner", "--component", help="Name of the ita_ner component"),
    shuffled: bool = typer.Option(
        False, "--shuffled-contexts",
        help="Also score the cross-modal view with every post given another post's "
        "context: what a wrong context costs"),
) -> None:
    """Score a pipeline on gold data once per inference view (cross-modal, text-only)."""
    view_list = [view.strip() for view in views.split(",") if view.strip()]
    unknown = [view for view in view_list if view not in VIEWS]
    if unknown or not view_list:
        msg.fail(f"Unknown view(s) {unknown}; choose from {', '.join(VIEWS)}", exits=1)
    if output is not None and output.is_dir():
        msg.fail(f"--output {output} is a folder; name the JSON file to write", exits=1)
    if gpu_id >= 0:
        try:
            spacy.require_gpu(gpu_id)
        except ValueError as err:  # thinc's: no CuPy, no GPU
            msg.fail(f"--gpu-id {gpu_id}: {err}; use --gpu-id -1 for the CPU", exits=1)
    try:
        nlp = spacy.load(model)
        if component not in nlp.pipe_names:
            raise ValueError(f"{model} has no component {component!r} (its components: "
                             f"{', '.join(nlp.pipe_names) or 'none'})")
        ner = nlp.get_pipe(component)
        if precision is not None:
            ner.precision = precision
        examples = list(MultimodalCorpus(data)(nlp))
    except (OSError, ValueError) as err:
        msg.fail(str(err), exits=1)
    check_gold(examples, data, ner.labels)
    if output is not None:
        check_output(output, data, nlp.path)
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # a file where a folder should be, no permission
            msg.fail(f"--output {output}: cannot make the folder {output.parent} "
                     f"({err.strerror}: {err.filename})", exits=1)
    results = evaluate_views(nlp, examples, view_list, batch_size, component)
    metrics = {"model": model, "data": str(data), "precision": ner.precision_in_effect,
               "views": results}
    rows = [(view, r) for view, r in results.items()]
    if shuffled:
        metrics["shuffled_contexts"] = evaluate_views(
            nlp, shuffle_contexts(examples), ["cross"], batch_size, component)
        rows.append(("cross, shuffled contexts", metrics["shuffled_contexts"]["cross"]))
    msg.table(
        [(view, *(_cell(r[key], ".2%") for key in ("ents_p", "ents_r", "ents_f")),
          _cell(r["words_per_second"], ".0f"), f"{r['n_cross_docs']}/{r['n_docs']}")
         for view, r in rows],
        header=("view", "P", "R", "F", "words/s", "with context"), divider=True)
    if output is not None:
        replace_json(output, metrics)
        msg.good(f"Saved metrics to {output}")
