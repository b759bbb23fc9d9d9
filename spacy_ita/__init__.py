"""spacy-ita: multimodal NER for spaCy with Image-Text Alignments (Wang et al., NAACL 2022)."""
from .about import __version__
from .visual_context import VisualContext, install_extensions

install_extensions()

from . import encoders, losses  # noqa: E402,F401  (registered functions)
from .ita_ner import ItaNer, make_ita_ner  # noqa: E402
from .ita_tagger import build_ita_tagger  # noqa: E402

__all__ = ["VisualContext", "ItaNer", "make_ita_ner", "build_ita_tagger", "__version__"]
