"""`python -m spacy_ita demo-images` and `from-jsonl`: the demo corpus, from recipes to `.spacy`.

The demo posts (project/assets/demo/*.jsonl) ship a recipe for their image
instead of the image: a sign, poster, jersey or logo drawn with Pillow, or one
of the real photos in `skimage.data`, with the text that the post's own words
lack. `demo-images` draws them (deterministically: fixed sizes, Pillow's
bundled font, no randomness) and writes records that `from-jsonl` turns into
gold `.spacy` Docs for `extract` to add visual context to.
"""
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import srsly
import typer
from spacy.tokens import Doc, DocBin

from ..files import replace_file
from ..visual_context import VisualContext
from . import app

SIZE = (384, 256)  # the drawing's coordinates
SAVED_SIZE = (288, 192)  # the saved image: small, so that OCR on a CPU stays quick
KINDS = ("sign", "poster", "jersey", "logo", "photo")
DEFAULT_COLORS = {
    "sign": ("#1f6f3f", "#ffffff"),
    "poster": ("#20204a", "#ffd84a"),
    "jersey": ("#b01c2e", "#ffffff"),
    "logo": ("#f4f4f4", "#1a1a1a"),
    "photo": ("#000000", "#ffffff"),
}
Entity = Tuple[int, int, str]


def _font(size: int):
    """Pillow's bundled TrueType font, so every machine draws the same pixels."""
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _fitted_font(draw, text: str, max_width: float, size: int):
    """The largest font up to `size` that fits `text` into `max_width` pixels."""
    while size > 10 and draw.textlength(text, font=_font(size)) > max_width:
        size -= 2
    return _font(size)


def _draw_lines(draw, lines: Sequence[str], box: Tuple[float, float, float, float],
                color: str, first_size: int, other_size: int) -> None:
    """Centre `lines` in `box`, the first one larger (a title)."""
    left, top, right, bottom = box
    fonts = [
        _fitted_font(draw, line, right - left, first_size if i == 0 else other_size)
        for i, line in enumerate(lines)
    ]
    heights = [font.size * 1.25 for font in fonts]
    y = top + (bottom - top - sum(heights)) / 2
    for line, font, height in zip(lines, fonts, heights):
        width = draw.textlength(line, font=font)
        draw.text((left + (right - left - width) / 2, y), line, font=font, fill=color)
        y += height


def _sign(draw, lines, background, foreground) -> None:
    """A road sign: a bordered plate on a post, against sky and grass."""
    width, height = SIZE
    draw.rectangle((0, 0, width, height * 0.7), fill="#9cc7e8")
    draw.rectangle((0, height * 0.7, width, height), fill="#5d8a3a")
    draw.rectangle((width / 2 - 6, height * 0.6, width / 2 + 6, height), fill="#777777")
    plate = (24, 20, width - 24, height * 0.66)
    draw.rounded_rectangle(plate, radius=12, fill=background, outline=foreground, width=4)
    _draw_lines(draw, lines, (plate[0] + 14, plate[1] + 8, plate[2] - 14, plate[3] - 8),
                foreground, 44, 26)


def _poster(draw, lines, background, foreground) -> None:
    """A gig or event poster: stripes, a big title and smaller lines."""
    width, height = SIZE
    draw.rectangle((0, 0, width, height), fill=background)
    for i in range(0, width, 48):
        draw.line((i, 0, i + 96, height), fill=foreground, width=2)
    draw.rectangle((16, 16, width - 16, height - 16), fill=background, outline=foreground,
                   width=3)
    _draw_lines(draw, lines, (28, 24, width - 28, height - 24), foreground, 48, 26)


def _jersey(draw, lines, background, foreground) -> None:
    """A sports shirt seen from the back: club or player name, then the number."""
    width, height = SIZE
    draw.rectangle((0, 0, width, height), fill="#d9d4c7")
    shirt = [(110, 20), (160, 8), (224, 8), (274, 20), (350, 70), (318, 112), (286, 92),
             (286, height - 6), (98, height - 6), (98, 92), (66, 112), (34, 70)]
    draw.polygon(shirt, fill=background, outline="#333333")
    _draw_lines(draw, lines, (104, 28, 280, height - 14), foreground, 34, 70)


def _logo(draw, lines, background, foreground) -> None:
    """A brand mark: an emblem with the initial, the name and a tagline."""
    width, height = SIZE
    draw.rectangle((0, 0, width, height), fill=background)
    draw.ellipse((width / 2 - 40, 14, width / 2 + 40, 94), fill=foreground)
    initial = lines[0][:1] if lines else ""
    font = _font(48)
    draw.text((width / 2 - draw.textlength(initial, font=font) / 2, 26), initial,
              font=font, fill=background)
    _draw_lines(draw, lines, (20, 104, width - 20, height - 10), foreground, 40, 22)


def _photo(name: str):
    """A photo from `skimage.data` (bundled, no download), scaled to SIZE."""
    import skimage.data
    from PIL import Image, ImageOps

    loader = getattr(skimage.data, name, None)
    if loader is None:
        raise ValueError(f"skimage.data has no image {name!r}")
    image = Image.fromarray(loader()).convert("RGB")
    return ImageOps.fit(image, SIZE, Image.Resampling.LANCZOS)


def render_image(recipe: Dict[str, Any]):
    """Draw the picture a recipe describes, as an RGB PIL image."""
    from PIL import Image, ImageDraw

    kind = recipe.get("kind")
    if kind not in KINDS:
        raise ValueError(f"Unknown image kind {kind!r}; expected one of {KINDS}")
    lines = list(recipe.get("lines", []))
    background, foreground = DEFAULT_COLORS[kind]
    background = recipe.get("background", background)
    foreground = recipe.get("foreground", foreground)
    if kind == "photo":
        image = _photo(recipe["photo"])
        draw = ImageDraw.Draw(image)
        if lines:  # a caption banner across the bottom of the photo
            top = SIZE[1] - 34 * len(lines) - 10
            draw.rectangle((0, top, SIZE[0], SIZE[1]), fill=background)
            _draw_lines(draw, lines, (12, top + 4, SIZE[0] - 12, SIZE[1] - 4), foreground,
                        30, 24)
        return image
    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    {"sign": _sign, "poster": _poster, "jersey": _jersey, "logo": _logo}[kind](
        draw, lines, background, foreground
    )
    return image


def entity_offsets(text: str, entities: Sequence[Sequence[str]], where: str) -> List[Entity]:
    """[surface, label] pairs, in reading order, to (start, end, label) character spans."""
    spans: List[Entity] = []
    position = 0
    for surface, label in entities:
        start = text.find(surface, position)
        if start < 0:
            raise ValueError(f"{where}: entity {surface!r} not found in {text!r} "
                             "(after the previous entity)")
        spans.append((start, start + len(surface), label))
        position = start + len(surface)
    return spans


def read_recipes(path: Path) -> Iterator[Dict[str, Any]]:
    """The posts of a recipe file, each checked for an id, a text and an image recipe."""
    for number, post in enumerate(srsly.read_jsonl(path), start=1):
        where = f"{path}, line {number}"
        if not isinstance(post, dict) or not all(
            isinstance(post.get(key), str) for key in ("id", "text")
        ) or not isinstance(post.get("image"), dict):
            raise ValueError(f"{where}: expected an object with 'id', 'text', 'entities' "
                             "and an 'image' recipe")
        post["spans"] = entity_offsets(post["text"], post.get("entities", []), where)
        yield post


def _pairs(input_path: Path, output: Path, suffix: str) -> List[Tuple[Path, Path]]:
    """(input, output) files: one file to another, or each .jsonl of a folder into
    a folder, named by stem with `suffix`."""
    if input_path.is_dir():
        inputs = sorted(input_path.glob("*.jsonl"))
        if not inputs:
            raise ValueError(f"No .jsonl files in {input_path}")
        return [(path, output / f"{path.stem}{suffix}") for path in inputs]
    return [(input_path, output)]


def draw_posts(recipes: Path, output: Path, image_dir: Path) -> int:
    """Draw the images of one recipe file and write its records; returns their number."""
    from PIL import Image

    records = []
    for post in read_recipes(recipes):
        image_path = image_dir / f"{post['id']}.png"
        image = render_image(post["image"])
        image.resize(SAVED_SIZE, Image.Resampling.LANCZOS).save(image_path, optimize=False)
        records.append({
            "text": post["text"],
            "image": os.path.relpath(image_path, output.parent),
            "image_id": post["id"],
            "entities": [list(span) for span in post["spans"]],
        })
    output.parent.mkdir(parents=True, exist_ok=True)
    srsly.write_jsonl(output, records)
    return len(records)


@app.command("demo-images")
def demo_images_cli(
    recipes: Path = typer.Argument(..., exists=True, metavar="RECIPES",
                                   help="JSONL of demo posts (id, text, entities, image "
                                   "recipe), or a folder of them."),
    output: Path = typer.Argument(..., metavar="OUTPUT",
                                  help="JSONL of {text, image, image_id, entities} records, "
                                  "or a folder for one per recipe file."),
    image_dir: Path = typer.Option(..., "--image-dir", "-i", metavar="DIR",
                                   help="Folder to draw the images into (<id>.png)."),
) -> None:
    """Draw the demo posts' images and write records for `from-jsonl`.

    Image paths in the records are relative to the record file's folder;
    entities are [start, end, label] character offsets.
    """
    image_dir.mkdir(parents=True, exist_ok=True)
    try:
        for source, target in _pairs(recipes, output, ".jsonl"):
            count = draw_posts(source, target, image_dir)
            typer.echo(f"Drew {count} images into {image_dir}; wrote {target}")
    except (ValueError, KeyError, OSError) as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(code=1)


def record_to_doc(nlp, record: Dict[str, Any], base: Path, where: str) -> Doc:
    """A gold Doc from a record: tokenized text, entities, image path, optional context."""
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise ValueError(f"{where}: expected an object with a 'text' string")
    doc = nlp.make_doc(record["text"])
    spans = []
    for start, end, label in record.get("entities", []):
        span = doc.char_span(start, end, label=label)
        if span is None:
            raise ValueError(f"{where}: entity {record['text'][start:end]!r} ({start}-{end}) "
                             "does not start and end on token boundaries")
        spans.append(span)
    doc.set_ents(spans, default="outside")
    image: Optional[str] = record.get("image")
    if image is not None:
        doc._.image = image if os.path.isabs(image) else os.path.normpath(base / image)
    doc._.image_id = record.get("image_id")
    if record.get("visual_context") is not None:
        doc._.visual_context = VisualContext.from_dict(record["visual_context"])
    return doc


@app.command("from-jsonl")
def from_jsonl_cli(
    input_path: Path = typer.Argument(..., exists=True, metavar="INPUT",
                                      help="JSONL of {text, entities[, image, image_id, "
                                      "visual_context]} records, or a folder of them."),
    output: Path = typer.Argument(..., metavar="OUTPUT",
                                  help="Output .spacy file, or a folder for one per input."),
    lang: str = typer.Option("en", "--lang", "-l", help="Language of the blank tokenizer."),
) -> None:
    """Convert JSONL records with gold entities to .spacy DocBins.

    Entities are [start, end, label] character offsets on token boundaries.
    A relative image path is taken relative to the record file's folder and
    stored in Doc._.image, so that `extract` can run on the result and keep
    the entities.
    """
    import spacy

    nlp = spacy.blank(lang)
    try:
        for source, target in _pairs(input_path, output, ".spacy"):
            doc_bin = DocBin(store_user_data=True)
            for number, record in enumerate(srsly.read_jsonl(source), start=1):
                doc_bin.add(record_to_doc(nlp, record, source.parent, f"{source}, line {number}"))
            target.parent.mkdir(parents=True, exist_ok=True)
            replace_file(target, doc_bin.to_bytes())
            typer.echo(f"Wrote {len(doc_bin)} docs to {target}")
    except (ValueError, TypeError) as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(code=1)
