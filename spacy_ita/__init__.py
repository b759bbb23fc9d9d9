"""spacy-ita: multimodal NER for spaCy with Image-Text Alignments (Wang et al., NAACL 2022).

Importing the package installs the Doc extensions; the torch-based components
load lazily (spaCy finds them through entry points), so that `import spacy_ita`
and the CLI stay fast.
"""
import os
import sys

from .about import __version__
from .visual_context import VisualContext, install_extensions

install_extensions()


def _one_torch_thread_after_fork() -> None:
    """Run torch single-threaded in forked children (`nlp.pipe(n_process=...)`).

    torch's CPU thread pool (GNU OpenMP) does not survive fork(): once the
    parent has run a parallel op (loading a model is enough), a child's first
    parallel op waits forever for pool threads that do not exist. With one
    thread torch never enters the pool; PyTorch's DataLoader workers do the same.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_one_torch_thread_after_fork)

from .context import make_doc, pipe_posts  # noqa: E402  (also registers the PIL msgpack hooks)

_LAZY = {
    "ItaNer": "ner.component",
    "make_ita_ner": "ner.component",
    "build_ita_tagger": "ner.model",
}

__all__ = ["VisualContext", "make_doc", "pipe_posts", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'spacy_ita' has no attribute {name!r}")
