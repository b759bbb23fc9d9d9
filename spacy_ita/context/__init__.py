"""Turning a post's image into text: the `ita_context` component and its extractors.

Importing this package registers the msgpack hooks that let a PIL image in
`Doc._.image` survive `Doc.to_bytes` and `DocBin`. It stays light (no spaCy,
Pillow or torch import): the component is in `spacy_ita.context.component`,
the extractors in `ocr`, `tags` and `captions`, the persistent cache in
`cache` (which `ita_knowledge` shares).
"""
from typing import Any, Iterable, Iterator, Optional, Tuple

import srsly

from .images import decode_pil_image, encode_pil_image

srsly.msgpack_encoders.register("spacy_ita_pil_image", func=encode_pil_image)
srsly.msgpack_decoders.register("spacy_ita_pil_image", func=decode_pil_image)


def make_doc(nlp: Any, text: str, image: Any = None, image_id: Optional[str] = None):
    """Tokenize `text` into a Doc carrying its image (path, bytes or PIL image)."""
    doc = nlp.make_doc(text)
    doc._.image = image
    doc._.image_id = image_id
    return doc


def pipe_posts(
    nlp: Any,
    posts: Iterable[Tuple[str, Any]],
    batch_size: Optional[int] = None,
    n_process: int = 1,
) -> Iterator[Any]:
    """Run `nlp` over (text, image) pairs in batches, yielding Docs in order."""
    docs = (make_doc(nlp, text, image) for text, image in posts)
    return nlp.pipe(docs, batch_size=batch_size, n_process=n_process)


__all__ = ["make_doc", "pipe_posts"]
