"""spacy-ita: multimodal NER for spaCy with Image-Text Alignments (Wang et al., NAACL 2022).

Importing the package installs the Doc extensions; the torch-based components
load lazily (spaCy finds them through entry points), so that `import spacy_ita`
and the CLI stay fast.
"""
from .about import __version__
from .visual_context import VisualContext, install_extensions

install_extensions()

from .context import make_doc, pipe_posts  # noqa: E402  (also registers the PIL msgpack hooks)

_LAZY = {
    "ItaNer": "ita_ner",
    "make_ita_ner": "ita_ner",
    "build_ita_tagger": "ita_tagger",
}

__all__ = ["VisualContext", "make_doc", "pipe_posts", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'spacy_ita' has no attribute {name!r}")
