"""Read and write the MNER text format (Twitter-2015/2017) as spaCy Docs.

A file holds posts: an `IMGID:<id>` line, one `token<TAB>tag` line per token
and a blank line. Tags may be BIO, BIOES or BILOU over any label set; an
orphan `I-X` opens an entity, as conlleval and seqeval score it. A file with no
IMGID lines at all is read as plain two-column CoNLL (no image ids).

The *inline* variant, released by KB-NER, AdaSeq, PGIM, MoRe and RiVEG, puts
each post's context after its tokens: a `<EOS>` token line, then one line per
context token, all tagged `X` (`token tag` lines with a space are accepted too).
"""
import re
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

import spacy
from spacy.language import Language
from spacy.tokens import Doc, Span
from spacy.vocab import Vocab

from ..visual_context import FIELDS, VisualContext, get_visual_context

IMGID_PREFIX = "IMGID:"
# The inline format: the token that ends a post's sentence and starts its
# context, and the tags its context tokens may carry.
EOS_TOKEN = "<EOS>"
CONTEXT_TAG = "X"
_CONTEXT_TAGS = (CONTEXT_TAG, "O")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
_TAG_RE = re.compile(r"^([BIESLU])-(\S+)$")
_CAPTION_RE = re.compile(r"^\s*([^\s:]+)\s*:(.*)$")
# Bytes that are not UTF-8 (decoded with surrogateescape) and NUL, which no
# text file has (a UTF-16 file read as UTF-8 is full of them).
_NOT_TEXT_RE = re.compile("[\x00\udc80-\udcff]")

PathLike = Union[str, Path]
Spans = List[Tuple[int, int, str]]


def strip_image_extension(image_id: str) -> str:
    """`123.jpg` -> `123`, so captions and posts match with or without extension."""
    stem, dot, ext = image_id.rpartition(".")
    if dot and stem and f".{ext.lower()}" in IMAGE_EXTENSIONS:
        return stem
    return image_id


def _quoted(text: str, limit: int = 80) -> str:
    """`text` quoted for a one-line message: its first `limit` characters, and
    its length when it is longer (a line of a broken file can be megabytes)."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text):,} characters)"


def token_error(token: str) -> Optional[str]:
    """Why `token` can't be a token line of the format, or None if it can.

    A token with whitespace inside would be split differently when spaCy
    re-tokenizes the Doc's text, and is usually a sign of a broken file. A token
    made only of whitespace (Twitter-2015 has a lone U+00A0) is kept: spaCy
    represents it as a space token. Line breaks and tabs can never be stored.
    """
    if not token:
        return "empty token"
    if any(char in token for char in "\t\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"):
        return f"token {_quoted(token)} contains a tab or line break"
    if not token.isspace() and any(char.isspace() for char in token):
        return (
            f"token {_quoted(token)} contains whitespace; a token must not contain "
            "whitespace (split it into one token per line, or join its parts)"
        )
    return None


def bio_to_spans(tags: Iterable[Tuple[str, str]]) -> Spans:
    """(prefix, label) per token -> (start, end, label) entity spans.

    Prefixes are "O", B/I/E/S (BIOES) or their BILOU aliases L/U. An I- or E-
    that doesn't continue an open entity of the same label opens one
    (conlleval convention); E-, S- and their aliases close the entity.
    """
    spans: Spans = []
    start: Optional[int] = None
    label = ""
    i = -1
    for i, (prefix, tag_label) in enumerate(tags):
        continues = start is not None and prefix in "IEL" and tag_label == label
        if not continues:
            if start is not None:
                spans.append((start, i, label))
            start, label = (None, "") if prefix == "O" else (i, tag_label)
        if start is not None and prefix in "ESLU":
            spans.append((start, i + 1, label))
            start, label = None, ""
    if start is not None:
        spans.append((start, i + 1, label))
    return spans


def numbered_lines(path: Path) -> Iterator[Tuple[int, str]]:
    """(line number, line) of a UTF-8 text file, BOM optional, any line endings.

    A byte that is not UTF-8 (a Latin-1 or UTF-16 file, a file cut inside a
    character) is a ValueError naming file:line, not a bare UnicodeDecodeError.
    """
    with path.open(encoding="utf-8-sig", errors="surrogateescape") as file_:
        for lineno, line in enumerate(file_, start=1):
            bad = _NOT_TEXT_RE.search(line)
            if bad is not None:
                char = bad.group()
                what = "NUL byte" if char == "\x00" else f"byte 0x{ord(char) - 0xDC00:02x}"
                raise ValueError(
                    f"{path}:{lineno}: {what} at column {bad.start() + 1} is not UTF-8 text; "
                    "the file must be UTF-8 (convert it, e.g. with iconv -t UTF-8)"
                )
            yield lineno, line


def read_captions(path: PathLike) -> Dict[str, str]:
    """Read `<id>.jpg :<caption>` lines (extension optional) into {id: caption}.

    Ids are returned without an image extension. Blank lines are skipped; an
    empty caption is kept as "" (Twitter-2015's BLIP-2 file has two). A
    malformed line or a second caption for an id is a ValueError naming file:line.
    """
    path = Path(path)
    captions: Dict[str, str] = {}
    first_line: Dict[str, int] = {}
    for lineno, raw in numbered_lines(path):
        line = raw.strip()
        if not line:
            continue
        match = _CAPTION_RE.match(line)
        if match is None:
            raise ValueError(
                f"{path}:{lineno}: malformed caption line {_quoted(line)}; expected "
                "'<image id>[.jpg] :<caption>'"
            )
        image_id = strip_image_extension(match.group(1))
        caption = match.group(2).strip()
        if image_id in captions:
            raise ValueError(
                f"{path}:{lineno}: duplicate caption for image id {image_id!r} "
                f"(first given on line {first_line[image_id]})"
            )
        captions[image_id] = caption
        first_line[image_id] = lineno
    return captions


def _split_token_line(line: str, where: str, inline: bool) -> Tuple[str, str]:
    """`token<TAB>tag` (or, in the inline format, `token tag`) -> (token, tag);
    ValueError naming `where`."""
    fields = line.split("\t")
    if inline and len(fields) == 1:
        fields = line.rsplit(" ", 1)
    if len(fields) != 2:
        expected = "'token<TAB>tag' or 'token tag'" if inline else "'token<TAB>tag'"
        found = "no TAB" if len(fields) == 1 else f"{len(fields) - 1} TABs"
        raise ValueError(f"{where}: expected {expected}, found {found} in {_quoted(line)}")
    token, tag = fields
    problem = token_error(token)
    if problem is not None:
        raise ValueError(f"{where}: {problem}")
    return token, tag


def _parse_tag(tag: str, where: str) -> Tuple[str, str]:
    """`O` or `B-PER` -> (prefix, label); ValueError naming `where`."""
    if tag == "O":
        return "O", ""
    match = _TAG_RE.match(tag)
    if match is None:
        raise ValueError(
            f"{where}: unknown tag {tag!r}; expected 'O' or PREFIX-LABEL with "
            "PREFIX one of B, I, E, S (BIOES) or L, U (BILOU), e.g. 'B-PER'"
        )
    return match.group(1), match.group(2)


def _is_eos_line(line: str) -> bool:
    return line.startswith(EOS_TOKEN) and line[len(EOS_TOKEN):len(EOS_TOKEN) + 1] in ("\t", " ")


def detect_format(path: PathLike) -> str:
    """"inline" if some line of the file is a `<EOS>` token line, else "mner"."""
    path = Path(path)
    if any(_is_eos_line(line) for _, line in numbered_lines(path)):
        return "inline"
    return "mner"


def _resolve_vocab(nlp_or_vocab: Union[Language, Vocab, None], lang: str) -> Vocab:
    if nlp_or_vocab is None:
        return spacy.blank(lang).vocab
    if isinstance(nlp_or_vocab, Language):
        return nlp_or_vocab.vocab
    if isinstance(nlp_or_vocab, Vocab):
        return nlp_or_vocab
    raise TypeError(f"Expected a Language, a Vocab or None, got {type(nlp_or_vocab).__name__}")


def read_mner(
    path: PathLike,
    captions_path: Optional[PathLike] = None,
    nlp_or_vocab: Union[Language, Vocab, None] = None,
    *,
    lang: str = "en",
    knowledge_path: Optional[PathLike] = None,
    inline_field: Optional[str] = None,
) -> Iterator[Doc]:
    """Stream the posts of an MNER file as Docs, one per post.

    Sets the words (one space between tokens), `doc.ents` (every other token is
    outside an entity), `Doc._.image_id` and, when captions_path has a caption
    or knowledge_path a text for the post's image (both `<id>.jpg :<text>`
    files), `Doc._.visual_context` with them as captions and knowledge (an
    empty text gives a VisualContext without it).
    With inline_field (a VisualContext field) the file is read in the inline
    format: a post's tokens after `<EOS>`, joined by spaces, become that field
    (nothing after `<EOS>`: an empty context; no `<EOS>`: no context).
    Without nlp_or_vocab the Docs use the vocab of `spacy.blank(lang)`.
    Malformed input raises ValueError naming file:line.
    """
    path = Path(path)
    if inline_field is not None and inline_field not in FIELDS:
        raise ValueError(f"Unknown context field {inline_field!r} for the inline format; "
                         f"expected one of {FIELDS}")
    vocab = _resolve_vocab(nlp_or_vocab, lang)
    texts = {
        field: read_captions(source)
        for field, source in (("captions", captions_path), ("knowledge", knowledge_path))
        if source is not None
    }
    for image_id, words, tags, context in _parse_posts(path, inline=inline_field is not None):
        yield _post_doc(vocab, image_id, words, tags, context, inline_field, texts)


RawPost = Tuple[Optional[str], List[str], List[Tuple[str, str]], Optional[List[str]]]


def _post_doc(vocab: Vocab, image_id: Optional[str], words: List[str],
              tags: List[Tuple[str, str]], context: Optional[List[str]],
              inline_field: Optional[str], texts: Dict[str, Dict[str, str]]) -> Doc:
    """A post as a Doc: its entities, image id, and the context fields that its
    inline context and the files keyed by image id give it."""
    doc = Doc(vocab, words=words, spaces=[True] * (len(words) - 1) + [False])
    ents = [Span(doc, start, end, label=label) for start, end, label in bio_to_spans(tags)]
    doc.set_ents(ents, default="outside")
    doc._.image_id = image_id
    fields: Dict[str, List[str]] = {}
    if context is not None:
        fields[inline_field] = [" ".join(context)] if context else []
    for field, by_id in texts.items():
        text = by_id.get(strip_image_extension(image_id)) if image_id else None
        if text is not None:
            fields[field] = fields.get(field, []) + ([text] if text else [])
    if fields:
        doc._.visual_context = VisualContext(**fields)
    return doc


def _header_image_id(line: str, where: str, has_imgid: Optional[bool],
                     first_token_line: int) -> str:
    """The image id of an `IMGID:<id>` line; ValueError naming `where`."""
    if has_imgid is False:
        raise ValueError(
            f"{where}: IMGID line in a file whose first post (line "
            f"{first_token_line}) has none; either every post starts "
            "with an IMGID line or none does"
        )
    image_id = line[len(IMGID_PREFIX):].strip()
    if not image_id or any(char.isspace() for char in image_id):
        raise ValueError(
            f"{where}: invalid image id {_quoted(image_id)} (empty or containing whitespace)"
        )
    return image_id


def _parse_posts(path: Path, inline: bool) -> Iterator[RawPost]:
    """The posts of an MNER file as (image id, words, tags, context tokens, or
    None without `<EOS>`); malformed input raises ValueError naming file:line."""

    def no_tokens() -> ValueError:
        return ValueError(f"{path}:{header_line}: post IMGID:{image_id} has no tokens")

    has_imgid: Optional[bool] = None  # decided by the first non-blank line
    first_token_line = header_line = 0
    in_post = False  # after an IMGID line or a token line, before a blank line
    image_id: Optional[str] = None
    words: List[str] = []
    tags: List[Tuple[str, str]] = []
    context: Optional[List[str]] = None  # the post's context tokens, once past <EOS>
    for lineno, raw in numbered_lines(path):
        where = f"{path}:{lineno}"
        line = raw.rstrip()
        is_header = line.startswith(IMGID_PREFIX) and "\t" not in line
        if not line.strip() or is_header:
            if words:
                yield image_id, words, tags, context
            elif in_post:
                raise no_tokens()
            in_post, words, tags, context = False, [], [], None
        if not line.strip():
            continue
        if is_header:
            image_id = _header_image_id(line, where, has_imgid, first_token_line)
            has_imgid, in_post, header_line = True, True, lineno
            continue
        if has_imgid is None:
            has_imgid, first_token_line = False, lineno
        if has_imgid and not in_post:
            raise ValueError(
                f"{where}: token line outside a post; expected an IMGID:<id> line "
                "after the blank line (the file's other posts start with one)"
            )
        token, tag = _split_token_line(line, where, inline)
        in_post = True
        if context is not None:
            if tag not in _CONTEXT_TAGS:
                raise ValueError(
                    f"{where}: tag {tag!r} after {EOS_TOKEN}; the context tokens that follow "
                    f"it are tagged {CONTEXT_TAG} (is the blank line before a new post missing?)"
                )
            context.append(token)
        elif inline and token == EOS_TOKEN:
            if not words:
                raise ValueError(f"{where}: {EOS_TOKEN} before any token of the post")
            context = []
        else:
            words.append(token)
            tags.append(_parse_tag(tag, where))
    if words:
        yield image_id, words, tags, context
    elif in_post:
        raise no_tokens()


def write_mner(docs: Iterable[Doc], path: PathLike, *, inline_field: Optional[str] = None) -> None:
    """Write Docs in the MNER format with BIO tags (the inverse of read_mner);
    with inline_field, in the inline format (see `format_mner`)."""
    with Path(path).open("w", encoding="utf-8", newline="\n") as file_:
        file_.writelines(format_mner(docs, inline_field=inline_field))


def format_mner(docs: Iterable[Doc], *, inline_field: Optional[str] = None) -> Iterator[str]:
    """The posts of an MNER file, one string per post, blank line included.

    Writes an IMGID line per post when the Docs have `_.image_id`; either all
    Docs or none must have one. With inline_field, a doc with a visual context
    gets a `<EOS>` line and that field's text, split at whitespace, one
    `token<TAB>X` line per word. Tokens are checked like read_mner checks
    them, so whatever this writes reads back the same.
    """
    if inline_field is not None and inline_field not in FIELDS:
        raise ValueError(f"Unknown context field {inline_field!r} for the inline format; "
                         f"expected one of {FIELDS}")
    has_imgid: Optional[bool] = None
    for i, doc in enumerate(docs):
        image_id = doc._.image_id
        if has_imgid is None:
            has_imgid = image_id is not None
        if has_imgid != (image_id is not None):
            raise ValueError(
                f"Doc {i} {'lacks' if has_imgid else 'has'} an image id while doc 0 "
                f"{'has' if has_imgid else 'does not'}; the format needs all or none"
            )
        if len(doc) == 0:
            raise ValueError(f"Doc {i} has no tokens")
        lines = []
        if image_id is not None:
            if not isinstance(image_id, (str, int)) or isinstance(image_id, bool):
                raise ValueError(f"Doc {i}: the image id must be a string, got {image_id!r}")
            image_id = str(image_id)
            if not image_id or any(char.isspace() for char in image_id):
                raise ValueError(f"Doc {i}: invalid image id {image_id!r}")
            lines.append(f"{IMGID_PREFIX}{image_id}")
        for token in doc:
            problem = token_error(token.text)
            if problem is None and inline_field is not None and token.text == EOS_TOKEN:
                problem = f"token {EOS_TOKEN} would read back as the start of the context"
            if problem is not None:
                raise ValueError(f"Doc {i}, token {token.i}: {problem}")
            if token.ent_iob_ in ("B", "I"):
                if any(char.isspace() for char in token.ent_type_):
                    raise ValueError(f"Doc {i}: label {token.ent_type_!r} contains whitespace")
                lines.append(f"{token.text}\t{token.ent_iob_}-{token.ent_type_}")
            else:
                lines.append(f"{token.text}\tO")
        context = get_visual_context(doc, i) if inline_field is not None else None
        if context is not None:
            words = " ".join(getattr(context, inline_field)).split()
            lines += [f"{EOS_TOKEN}\t{CONTEXT_TAG}"] + [f"{word}\t{CONTEXT_TAG}" for word in words]
        yield "\n".join(lines) + "\n\n"
