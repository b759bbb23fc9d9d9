"""One Markdown table of the ITA ablation from the metrics of `spacy_ita evaluate`.

    python scripts/ablation_table.py metrics/demo/text_only.json metrics/demo/ita.json \
        metrics/demo/ita_cva.json --output metrics/demo/ablation.md

Rows are the variants (named by file stem), columns P/R/F1 per inference view,
the shape of the ITA paper's ablation; then F1 per entity type.
"""
from pathlib import Path
from typing import Any, Dict, List, Optional

import srsly
import typer
from wasabi import msg

from spacy_ita.files import replace_file

VIEW_NAMES = {"cross": "cross-modal", "text": "text-only", "auto": "auto"}


def _percent(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def metrics_problem(data: Any) -> Optional[str]:
    """What keeps `data` from being the metrics of `evaluate` that the table
    reads (views of P/R/F1 numbers and per-type objects), or None."""
    views = data.get("views") if isinstance(data, dict) else None
    if not isinstance(views, dict):
        return "no 'views' object"
    for view, scores in views.items():
        if not isinstance(scores, dict):
            return f"views.{view} is not an object"
        per_type = scores.get("ents_per_type") or {}
        if not isinstance(per_type, dict) or not all(
                isinstance(type_scores, dict) for type_scores in per_type.values()):
            return f"views.{view}.ents_per_type is not an object of objects"
        numbers = [scores.get(key) for key in ("ents_p", "ents_r", "ents_f")]
        numbers += [type_scores.get("f") for type_scores in per_type.values()]
        if not all(number is None or isinstance(number, (int, float)) for number in numbers):
            return f"views.{view} has a score that is not a number"
    return None


def comparison_table(results: Dict[str, Dict]) -> str:
    """Markdown: P/R/F1 per variant and view, then F1 per entity type."""
    views = [view for view in VIEW_NAMES if any(view in r["views"] for r in results.values())]
    header = ["variant"] + [f"{VIEW_NAMES[v]} {m}" for v in views for m in ("P", "R", "F1")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, result in results.items():
        cells = [name]
        for view in views:
            scores = result["views"].get(view, {})
            cells += [_percent(scores.get(key)) for key in ("ents_p", "ents_r", "ents_f")]
        lines.append("| " + " | ".join(cells) + " |")
    labels = sorted({label for r in results.values() for s in r["views"].values()
                     for label in (s.get("ents_per_type") or {})})
    if labels:
        lines += ["", "F1 per entity type:", ""]
        lines.append("| variant | view | " + " | ".join(labels) + " |")
        lines.append("|" + "---|" * (len(labels) + 2))
        for name, result in results.items():
            for view in views:
                per_type = result["views"].get(view, {}).get("ents_per_type") or {}
                cells = [_percent(per_type.get(label, {}).get("f")) if label in per_type
                         else "–" for label in labels]
                lines.append(f"| {name} | {VIEW_NAMES[view]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(
    metrics: List[Path] = typer.Argument(..., exists=True, dir_okay=False,
                                         help="JSON files of `evaluate`, one per variant"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the table here"),
) -> None:
    """One Markdown table comparing variants (named by file stem) on both views."""
    results = {}
    for path in metrics:
        try:
            data = srsly.read_json(path)
            problem = metrics_problem(data)
        except ValueError as err:  # cut short, or not JSON
            problem = f"invalid JSON ({err})"
        if problem is not None:
            msg.fail(f"{path} is not a metrics file of `python -m spacy_ita evaluate`: {problem}",
                     exits=1)
        results[path.stem] = data
    table = comparison_table(results)
    if output is None:
        typer.echo(table)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        replace_file(output, table)
        msg.good(f"Saved the comparison of {len(results)} variants to {output}")


if __name__ == "__main__":
    typer.run(main)
