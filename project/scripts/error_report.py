"""A self-contained HTML page of a pipeline's errors on gold posts.

    python scripts/error_report.py training/demo/ita_cva/model-best corpus/demo/dev.spacy \
        reports/demo/ita_cva.html --limit 8

Per post: the image, its visual context, the gold and predicted entities
(displaCy) and the missed, spurious and wrong-type entities.
"""
import base64
import html
import io
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import typer
from spacy.tokens import Doc
from wasabi import msg

from spacy_ita.context.images import ImageError, load_image
from spacy_ita.files import replace_file
from spacy_ita.visual_context import FIELDS, get_visual_context

Span = Tuple[int, int, str]
REPORT_IMAGE_SIDE = 600  # pixels: twice the width the page shows an image at


def entity_errors(gold: Doc, predicted: Doc) -> Dict[str, List[Tuple[Span, Optional[str]]]]:
    """Missed, spurious and wrong-type entities, by character offsets.

    A predicted entity with the gold boundaries but another label is a wrong
    type (paired with the gold label), not a miss plus a spurious entity.
    """
    gold_spans = {(e.start_char, e.end_char): e.label_ for e in gold.ents}
    pred_spans = {(e.start_char, e.end_char): e.label_ for e in predicted.ents}
    errors: Dict[str, List[Tuple[Span, Optional[str]]]] = {
        "missed": [], "spurious": [], "wrong type": []}
    for offsets, label in gold_spans.items():
        if offsets not in pred_spans:
            errors["missed"].append(((*offsets, label), None))
        elif pred_spans[offsets] != label:
            errors["wrong type"].append(((*offsets, pred_spans[offsets]), label))
    for offsets, label in pred_spans.items():
        if offsets not in gold_spans:
            errors["spurious"].append(((*offsets, label), None))
    return {kind: sorted(spans) for kind, spans in errors.items()}


def _image_html(doc: Doc) -> str:
    """The post's image, decoded and shrunk, inlined as a PNG; its id when the
    file is not here or is not an image (a path in a corpus from elsewhere
    must not put some other file of this machine into a page that is shared)."""
    path = Path(doc._.image) if isinstance(doc._.image, (str, Path)) else None
    try:
        image = None if path is None else load_image(path, max_side=REPORT_IMAGE_SIDE)
    except ImageError:
        image = None
    if image is not None:
        png = io.BytesIO()
        image.save(png, format="PNG")
        data = base64.b64encode(png.getvalue()).decode("ascii")
        return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'
    name = doc._.image_id or (path.name if path is not None else None)
    label = f"image {html.escape(str(name))}" if name else "no image"
    return f'<div class="noimage">{label}<br>(file not available)</div>'


def _context_html(doc: Doc) -> str:
    context = get_visual_context(doc)
    if context is None or context.is_empty():
        return "<p class='muted'>no visual context</p>"
    rows = "".join(
        f"<tr><th>{name.replace('_', ' ')}</th><td>"
        f"{html.escape(' | '.join(getattr(context, name)))}</td></tr>"
        for name in FIELDS if getattr(context, name))
    return f"<table class='context'>{rows}</table>"


def _errors_html(doc: Doc, errors: Dict[str, List[Tuple[Span, Optional[str]]]]) -> str:
    if not any(errors.values()):
        return "<p class='ok'>✓ all entities correct</p>"
    items = []
    for kind, spans in errors.items():
        for (start, end, label), gold_label in spans:
            detail = f"{label}, gold {gold_label}" if gold_label else label
            items.append(f"<li class='{kind.replace(' ', '-')}'><b>{kind}</b>: "
                         f"{html.escape(doc.text[start:end])} ({html.escape(detail)})</li>")
    return f"<ul class='errors'>{''.join(items)}</ul>"


CSS = """
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 1100px; }
.post { border: 2px solid #8c8; border-radius: 8px; padding: 12px; margin: 16px 0;
        display: grid; grid-template-columns: 300px 1fr; gap: 16px; }
.post.has-errors { border-color: #d55; }
.post img { max-width: 300px; border-radius: 4px; }
.noimage { width: 280px; height: 120px; background: #eee; color: #666; display: flex;
           align-items: center; justify-content: center; text-align: center; }
h3 { margin: 4px 0; font-size: 14px; color: #555; text-transform: uppercase; }
.context th { text-align: left; padding-right: 8px; color: #555; font-weight: normal; }
.errors li.missed { color: #b00; } .errors li.spurious { color: #c60; }
.errors li.wrong-type { color: #70a; } .ok { color: #080; } .muted { color: #888; }
.summary td, .summary th { padding: 2px 12px 2px 0; text-align: left; }
"""


def _ents_html(doc: Doc, colors: Dict[str, str]) -> str:
    """displaCy's view of the doc's entities, in manual mode with the labels escaped:
    displaCy escapes the text but not labels, kb ids or user_data titles."""
    from spacy import displacy

    ents = [{"start": ent.start_char, "end": ent.end_char, "label": html.escape(ent.label_)}
            for ent in doc.ents]
    return displacy.render({"text": doc.text, "ents": ents}, style="ent", manual=True,
                           page=False, options={"colors": colors})


def report_html(title: str, posts: Sequence[Tuple[Doc, Doc]]) -> str:
    """The whole page for (gold, predicted) Doc pairs."""
    labels = sorted({ent.label_ for gold, pred in posts for ent in (*gold.ents, *pred.ents)})
    palette = ["#7aecec", "#feca74", "#aa9cfc", "#bfe1d9", "#e4e7d2", "#ff9561", "#c887fb"]
    colors = {html.escape(label): palette[i % len(palette)] for i, label in enumerate(labels)}
    counts = {"missed": 0, "spurious": 0, "wrong type": 0}
    sections = []
    for number, (gold, predicted) in enumerate(posts, start=1):
        errors = entity_errors(gold, predicted)
        for kind, spans in errors.items():
            counts[kind] += len(spans)
        has_errors = " has-errors" if any(errors.values()) else ""
        gold_html, pred_html = _ents_html(gold, colors), _ents_html(predicted, colors)
        sections.append(
            f"<section class='post{has_errors}'><div>{_image_html(gold)}"
            f"<h3>visual context</h3>{_context_html(predicted)}</div><div>"
            f"<h3>post {number}: gold</h3>{gold_html}<h3>predicted</h3>{pred_html}"
            f"<h3>errors</h3>{_errors_html(gold, errors)}</div></section>")
    n_gold = sum(len(gold.ents) for gold, _ in posts)
    summary = "".join(f"<tr><th>{kind}</th><td>{count}</td></tr>" for kind, count in counts.items())
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<table class='summary'><tr><th>posts</th><td>{len(posts)}</td></tr>"
            f"<tr><th>gold entities</th><td>{n_gold}</td></tr>{summary}</table>"
            f"{''.join(sections)}</body></html>")


def main(
    model: str = typer.Argument(..., help="Trained pipeline: a directory or an installed package"),
    data: Path = typer.Argument(..., exists=True, help=".spacy file of gold posts"),
    output: Path = typer.Argument(..., help="HTML file to write"),
    limit: int = typer.Option(8, "--limit", "-n", min=1, help="How many posts to show"),
    view: str = typer.Option("auto", "--view", help="ita_ner view: auto, cross or text"),
) -> None:
    """Write a self-contained HTML page for the first posts of DATA: image, visual
    context, gold and predicted entities, and the errors (missed, spurious,
    wrong type)."""
    import spacy

    from spacy_ita.corpus.readers import CorpusError, MultimodalCorpus

    nlp = spacy.load(model)
    if "ita_ner" in nlp.pipe_names:
        nlp.get_pipe("ita_ner").view = view
    try:
        examples = list(MultimodalCorpus(data, limit=limit)(nlp))
    except CorpusError as err:
        msg.fail(str(err), exits=1)
    predicted = nlp.pipe([eg.predicted for eg in examples])
    posts = [(eg.reference, doc) for eg, doc in zip(examples, predicted)]
    output.parent.mkdir(parents=True, exist_ok=True)
    title = f"{model} on {data} ({view} view)"
    replace_file(output, report_html(title, posts))
    msg.good(f"Wrote the report on {len(posts)} posts to {output}")


if __name__ == "__main__":
    typer.run(main)
