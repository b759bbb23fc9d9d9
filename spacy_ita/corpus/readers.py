"""`spacy-ita.MultimodalCorpus.v1`: a training corpus reader that keeps the image.

spaCy's stock `spacy.Corpus.v1` rebuilds each `eg.predicted` with
`nlp.make_doc(text)`, which drops `Doc._.visual_context`, `Doc._.image` and
`Doc._.image_id`, so the ITA components would train without visual context.
This reader copies them (all of the reference Doc's user data) across.
"""
import random
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Union

import spacy
from spacy.language import Language
from spacy.tokens import Doc, DocBin
from spacy.training import Example

from ..visual_context import get_visual_context


# What spaCy's DocBin raises on bytes it cannot decode (zlib, msgpack, the arrays' layout).
UNREADABLE = (ValueError, KeyError, TypeError, zlib.error)


class CorpusError(ValueError):
    """A corpus that cannot be read as it is: the message names the file (and
    the doc), so that commands can print it instead of a traceback."""


class MultimodalCorpus:
    """Callable `(nlp) -> Iterator[Example]` over the Docs of `.spacy` files."""

    def __init__(
        self,
        path: Union[str, Path, None],
        *,
        gold_preproc: bool = False,
        max_length: int = 0,
        limit: int = 0,
        shuffle: bool = False,
    ) -> None:
        for name, value in (("max_length", max_length), ("limit", limit)):
            if value < 0:
                raise ValueError(f"spacy-ita.MultimodalCorpus.v1: {name} must be >= 0, got {value}")
        # None is allowed here, as in spaCy's Corpus, so that configs with unset
        # paths can be validated; reading such a corpus is the error.
        self.path = None if path is None else Path(path)
        self.gold_preproc = gold_preproc
        self.max_length = max_length
        self.limit = limit
        self.shuffle = shuffle

    def files(self) -> List[Path]:
        """The `.spacy` files to read: the path itself, or those under a directory."""
        if self.path is None:
            raise CorpusError(
                "spacy-ita.MultimodalCorpus.v1 needs a path to a .spacy file or a "
                "directory of them; got None (is paths.train/paths.dev set?)"
            )
        if self.path.is_file():
            return [self.path]
        if self.path.is_dir():
            found = sorted(
                file_
                for file_ in self.path.rglob("*.spacy")
                if file_.is_file()
                and not any(part.startswith(".") for part in file_.relative_to(self.path).parts)
            )
            if not found:
                raise CorpusError(
                    f"spacy-ita.MultimodalCorpus.v1: no .spacy files under {self.path}"
                )
            return found
        raise CorpusError(
            f"spacy-ita.MultimodalCorpus.v1: corpus path {self.path} does not exist "
            "(expected a .spacy file or a directory of them)"
        )

    def read_docs(self, nlp: Language) -> Iterator[Doc]:
        """Reference Docs in file order, skipping those over max_length, up to
        limit; a doc that cannot be decoded, or whose entity tags or visual
        context are malformed, is a CorpusError naming the file and the doc's
        index in it."""
        count = 0
        for path in self.files():
            try:
                doc_bin = DocBin().from_disk(path)
            except UNREADABLE as err:
                raise CorpusError(
                    f"spacy-ita.MultimodalCorpus.v1: cannot read {path}: it is truncated "
                    f"or not a .spacy file ({type(err).__name__}: {err})"
                ) from err
            docs = doc_bin.get_docs(nlp.vocab)
            for index in range(len(doc_bin)):
                try:
                    doc = next(docs)  # decodes the doc's user data (invalid UTF-8, say)
                except UNREADABLE as err:
                    raise CorpusError(
                        f"{path}: doc {index}: cannot be decoded ({type(err).__name__}: {err})"
                    ) from err
                if self.max_length and len(doc) > self.max_length:
                    continue
                if self.limit and count >= self.limit:
                    return
                _check_doc(path, index, doc)  # only the docs read
                count += 1
                yield doc

    def make_predicted(self, nlp: Language, reference: Doc) -> Doc:
        """Tokenize the reference's text (or copy its words) and copy its user data.

        Both ways give the same text, so character-keyed extension values
        (`("._.", name, start_char, end_char)`) stay valid.
        """
        if self.gold_preproc:
            predicted = Doc(
                nlp.vocab,
                words=[token.text for token in reference],
                spaces=[bool(token.whitespace_) for token in reference],
            )
        else:
            predicted = nlp.make_doc(reference.text)
        predicted.user_data.update(reference.user_data)
        return predicted

    def __call__(self, nlp: Language) -> Iterator[Example]:
        docs: Iterable[Doc] = self.read_docs(nlp)
        if self.shuffle:
            docs = list(docs)
            random.shuffle(docs)
        for reference in docs:
            yield Example(self.make_predicted(nlp, reference), reference)


def _check_doc(path: Path, index: int, doc: Doc) -> None:
    """Raise CorpusError for entity tags spaCy cannot read (an I without a B)
    or a malformed visual context, which would otherwise fail deep in training
    or evaluation without naming the file."""
    try:
        doc.ents  # building the spans checks the tags
    except ValueError as err:
        reason = " ".join(str(err).split())  # spaCy's message lists the tokens on a second line
        raise CorpusError(f"{path}: doc {index} has invalid entity tags: {reason}") from None
    try:
        get_visual_context(doc, index)
    except (TypeError, ValueError) as err:
        raise CorpusError(f"{path}: {err}") from None


@spacy.registry.readers("spacy-ita.MultimodalCorpus.v1")
def create_multimodal_corpus(
    path: Optional[Path],
    *,
    gold_preproc: bool = False,
    max_length: int = 0,
    limit: int = 0,
    shuffle: bool = False,
) -> Callable[[Language], Iterable[Example]]:
    """Like `spacy.Corpus.v1` (path: a .spacy file or directory of them), but
    `eg.predicted` keeps `_.visual_context`, `_.image` and `_.image_id`.

    max_length skips Docs with more tokens (0: no limit), limit keeps the first
    that many Docs (0: all), shuffle reorders them every epoch.
    """
    return MultimodalCorpus(
        path, gold_preproc=gold_preproc, max_length=max_length, limit=limit, shuffle=shuffle
    )
