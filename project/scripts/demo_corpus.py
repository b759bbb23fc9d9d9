"""The demo corpus, from the shipped recipes to gold `.spacy` files.

    python scripts/demo_corpus.py ../assets/demo corpus/demo/gold --image-dir corpus/demo/images

The demo posts (assets/demo/*.jsonl at the top of the repository) ship a
recipe for their image instead of the image: a sign, poster, jersey or logo
drawn with Pillow, or one of the real photos in `skimage.data`, with the text
that the post's own words lack. This script draws them (deterministically:
fixed sizes, Pillow's bundled font, no randomness) and writes each recipe
file's posts as gold Docs whose `Doc._.image` points to their image, for
`python -m spacy_ita extract` to add the visual context to.
"""
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import spacy
import typer
from spacy.language import Language
from spacy.tokens import Doc, DocBin

from spacy_ita.bulk.inputs import jsonl_records
from spacy_ita.files import replace_file

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
# The photos of skimage.data that ship inside it (others are downloaded).
PHOTOS = frozenset({"astronaut", "camera", "cat", "chelsea", "clock", "coffee", "coins",
                    "horse", "hubble_deep_field", "moon", "page", "rocket", "text"})
SAFE_ID = re.compile(r"[A-Za-z0-9_-]+")  # a post's id names its image file: no folder, no '..'
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
    """A photo from `skimage.data` (one of PHOTOS: bundled, no download), scaled to SIZE."""
    import skimage.data
    from PIL import Image, ImageOps

    image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    return ImageOps.fit(image, SIZE, Image.Resampling.LANCZOS)


def render_image(recipe: Dict[str, Any]):
    """Draw the picture a recipe describes (checked by `recipe_problem`), as an RGB PIL image."""
    from PIL import Image, ImageDraw

    kind = recipe["kind"]
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


def read_recipes(path: Path) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """(where: file and line, post) for the posts of a recipe file, each checked
    (an id that can name an image file, a text, [surface, label] entities, an
    image recipe); ValueError naming the file and line."""
    for _, where, post, error, _ in jsonl_records(path):
        problem = error or recipe_problem(post)
        if problem is not None:
            raise ValueError(f"{where}: {problem}")
        post["spans"] = entity_offsets(post["text"], post.get("entities", []), where)
        yield where, post


def recipe_problem(post: Dict[str, Any]) -> Optional[str]:
    """What is wrong with a recipe file's post, or None."""
    if not all(isinstance(post.get(key), str) for key in ("id", "text")) or not isinstance(
            post.get("image"), dict):
        return "expected an object with 'id', 'text', 'entities' and an 'image' recipe"
    if not SAFE_ID.fullmatch(post["id"]):
        return (f"id {post['id']!r} names the image file: letters, digits, '_' and '-' only")
    entities = post.get("entities", [])
    if not isinstance(entities, list) or not all(
            isinstance(e, list) and len(e) == 2 and all(isinstance(x, str) for x in e)
            for e in entities):
        return "'entities' must be a list of [surface, label] pairs of strings"
    recipe = post["image"]
    if recipe.get("kind") not in KINDS:
        return f"unknown image kind {recipe.get('kind')!r}; expected one of {KINDS}"
    photo = recipe.get("photo")
    if recipe["kind"] == "photo" and not (isinstance(photo, str) and photo in PHOTOS):
        return f"a photo recipe needs 'photo', one of {sorted(PHOTOS)}"
    lines = recipe.get("lines", [])
    if not isinstance(lines, list) or not all(
            isinstance(line, str) and "\n" not in line for line in lines):
        return "the image recipe's 'lines' must be a list of strings without line breaks"
    for key in ("background", "foreground"):
        if key in recipe and not _is_colour(recipe[key]):
            return f"the image recipe's {key!r} must be a colour name or code, got {recipe[key]!r}"
    return None


def _is_colour(value: Any) -> bool:
    """Whether Pillow can draw in `value` (a name such as "navy" or a code such as
    "#1f6f3f"), checked before drawing so that the error can name the line."""
    from PIL import ImageColor

    if not isinstance(value, str):
        return False
    try:
        ImageColor.getrgb(value)
    except ValueError:
        return False
    return True


def post_to_doc(nlp: Language, post: Dict[str, Any], image: Path, where: str) -> Doc:
    """A gold Doc of a checked post: its tokens, entities, image path and id."""
    doc = nlp.make_doc(post["text"])
    spans = []
    for start, end, label in post["spans"]:
        span = doc.char_span(start, end, label=label)
        if span is None:
            raise ValueError(f"{where}: entity {post['text'][start:end]!r} ({start}-{end}) "
                             "does not start and end on token boundaries")
        spans.append(span)
    doc.set_ents(spans, default="outside")
    doc._.image = str(image)
    doc._.image_id = post["id"]
    return doc


def build_split(nlp: Language, recipes: Path, output: Path, image_dir: Path,
                drawn: Dict[str, str]) -> int:
    """Draw the images of one recipe file into `image_dir` and write its posts
    to `output` as gold Docs; returns their number. `drawn` holds where each
    id drawn so far came from: an id used twice is refused (its image would
    replace the first)."""
    from PIL import Image

    doc_bin = DocBin(store_user_data=True)
    for where, post in read_recipes(recipes):
        if post["id"] in drawn:
            raise ValueError(f"{where}: id {post['id']!r} is used already ({drawn[post['id']]})")
        drawn[post["id"]] = where
        image_path = image_dir / f"{post['id']}.png"
        image = render_image(post["image"])
        image.resize(SAVED_SIZE, Image.Resampling.LANCZOS).save(image_path, optimize=False)
        doc_bin.add(post_to_doc(nlp, post, image_path, where))
    output.parent.mkdir(parents=True, exist_ok=True)
    replace_file(output, doc_bin.to_bytes())
    return len(doc_bin)


def main(
    recipes: Path = typer.Argument(..., exists=True, file_okay=False,
                                   help="Folder of JSONL recipe files (id, text, entities, "
                                   "image recipe), one per split."),
    output: Path = typer.Argument(..., help="Folder for one gold <split>.spacy per recipe file."),
    image_dir: Path = typer.Option(..., "--image-dir", "-i", metavar="DIR",
                                   help="Folder to draw the images into (<id>.png)."),
) -> None:
    """Draw the demo posts' images and write the gold .spacy files that point to them."""
    nlp = spacy.blank("en")
    image_dir.mkdir(parents=True, exist_ok=True)
    try:
        sources = sorted(recipes.glob("*.jsonl"))
        if not sources:
            raise ValueError(f"No .jsonl files in {recipes}")
        drawn: Dict[str, str] = {}
        for source in sources:
            target = output / f"{source.stem}.spacy"
            count = build_split(nlp, source, target, image_dir, drawn)
            typer.echo(f"Drew {count} images into {image_dir}; wrote {target}")
    except (ValueError, KeyError, OSError) as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(code=1)


if __name__ == "__main__":
    typer.run(main)
