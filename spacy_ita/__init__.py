"""spacy-ita: multimodal NER for spaCy with Image-Text Alignments (Wang et al., NAACL 2022)."""
from .about import __version__
from .visual_context import VisualContext, install_extensions

install_extensions()

__all__ = ["VisualContext", "__version__"]
