"""The `spacy_ita_extractors` registry and the interface of what it returns.

Config blocks name extractors with `@spacy_ita_extractors = "spacy-ita.easyocr.v1"`.
The registry reads the `spacy_ita_extractors` entry point group, so other
packages can add extractors without importing this one.
"""
import hashlib
import json
from functools import lru_cache
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

import catalogue
from spacy.util import registry

REGISTRY_NAME = "spacy_ita_extractors"

if not hasattr(registry, REGISTRY_NAME):
    setattr(registry, REGISTRY_NAME, catalogue.create(REGISTRY_NAME, entry_points=True))
extractors = getattr(registry, REGISTRY_NAME)

PartialContext = Dict[str, List[str]]


@dataclass
class ImageRecord:
    """What an extractor sees of one post: the decoded RGB image (None when it
    could not be read or no extractor reads pixels) plus the names a lookup
    table may use for it."""

    image: Any
    image_id: Optional[str] = None
    file_name: Optional[str] = None


class SetupError(RuntimeError):
    """An extractor or a language model cannot run in this environment (an API
    key unset, an endpoint unreachable): no post gets its output until that is fixed."""


@dataclass
class ExtractorFailure:
    """An extractor's output for a post it could not handle (a failed call,
    say): that post gets no context from it and the reason as its error.
    `retryable` marks a failure that may pass (a server down, a timeout), so
    that a later run asks again."""

    reason: str
    retryable: bool = False


class Extractor:
    """Base class: turns a batch of ImageRecords into partial visual contexts.

    Subclasses load their model lazily through a module-level cache keyed by
    their settings, so building an extractor is cheap and a process loads each
    model once.
    """

    name = ""
    needs_pixels = True  # it cannot run on a post without a readable image
    cacheable = True

    @property
    def reads_pixels(self) -> bool:
        """Whether it uses the image when there is one (so it must be decoded)."""
        return self.needs_pixels

    def settings(self) -> Dict[str, Any]:
        """The settings that change the output; part of the persistent cache key."""
        raise NotImplementedError

    @property
    def cache_key(self) -> str:
        return f"{self.name} {json.dumps(self.settings(), sort_keys=True)}"

    def load(self) -> Any:
        """Load the model (or table) once per process and return it; called
        before the first batch so that a broken setup fails loudly."""

    def preflight(self) -> None:
        """Check, without loading a model, what a run needs from its
        environment (an API key, a server that answers); raise if it is missing."""

    def __call__(
        self, records: List[ImageRecord]
    ) -> List[Union[PartialContext, ExtractorFailure]]:
        raise NotImplementedError


class ImageExtractor(Extractor):
    """An extractor that reads pixels and fills one field of the context."""

    field = ""

    def extract(self, images: List[Any]) -> List[List[str]]:
        """Texts for each RGB PIL image, in order."""
        raise NotImplementedError

    def __call__(self, records: List[ImageRecord]) -> List[PartialContext]:
        texts = self.extract([record.image for record in records])
        return [{self.field: list(items)} for items in texts]


@lru_cache(maxsize=None)
def package_version(name: str) -> str:
    """The installed version of a Python package, for cache keys: an upgraded
    engine may read images differently, so its answers are not reused."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


@lru_cache(maxsize=16)
def file_digest(path: str, size: int, mtime_ns: int) -> str:
    """The start of a file's SHA-256 (read once per size and modification time):
    a cache key of weights that tells two files of one name and size apart."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]
