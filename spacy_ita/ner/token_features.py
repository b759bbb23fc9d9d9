"""Small per-token signals the tagger learns embeddings for, beside the encoder's vectors.

- **Shape**: the case pattern, kind (word, number, hashtag, handle, URL,
  punctuation, other) and length of each token. The bundled encoder is
  uncased, so without it "Apple", "APPLE" and "apple" look the same.
- **Mentions**: whether a token lies in a span that the post's knowledge names
  (first token or inside), and the words of the type it gives ("person",
  "sports team"). This aligns the context with the sentence explicitly; a
  context that names nothing in the post leaves every token unmarked.
"""
import re
from collections import Counter
from functools import lru_cache
from dataclasses import dataclass
from typing import Iterable, List, Sequence

import numpy
import torch
from torch import nn

from ..knowledge.mentions import Mention, align_mentions

KINDS = ("word", "number", "hashtag", "handle", "url", "punct", "other")
CASES = ("lower", "upper", "title", "mixed", "single_upper", "none")
LENGTHS = (1, 3, 6)  # length buckets: 1, 2-3, 4-6, 7+
N_SHAPES = len(KINDS) * len(CASES) * (len(LENGTHS) + 1)
TYPE_WORDS_PER_TOKEN = 3
PAD, UNKNOWN = 0, 1  # type word ids before the vocabulary's own
MIN_TYPE_WORD_COUNT = 3
_URL = re.compile(r"^(?:https?://|www\.)", re.IGNORECASE)
_NUMBER = re.compile(r"^[+-]?[\d.,:/%$€£]*\d[\d.,:/%$€£]*$")
_WORD_CHARS = re.compile(r"\w")


@lru_cache(maxsize=1 << 16)
def shape_id(word: str) -> int:
    """One id for the (kind, case, length bucket) of a token (cached: a
    collection of posts repeats most of its words)."""
    if _URL.match(word):
        kind = "url"
    elif word[:1] in "#@" and len(word) > 1 and _WORD_CHARS.search(word[1:]):
        kind = "hashtag" if word[0] == "#" else "handle"
    elif _NUMBER.match(word):
        kind = "number"
    elif any(char.isalpha() for char in word):
        kind = "word"
    elif _WORD_CHARS.search(word) is None and word.isascii():
        kind = "punct"
    else:
        kind = "other"
    body = word[1:] if kind in ("hashtag", "handle") else word
    letters = [char for char in body if char.isalpha()]
    if not letters:
        case = "none"
    elif all(char.islower() for char in letters):
        case = "lower"
    elif len(letters) == 1:
        case = "single_upper"
    elif all(char.isupper() for char in letters):
        case = "upper"
    elif letters[0].isupper() and all(char.islower() for char in letters[1:]):
        case = "title"
    else:
        case = "mixed"
    length = sum(len(word) > bound for bound in LENGTHS)
    return (KINDS.index(kind) * len(CASES) + CASES.index(case)) * (len(LENGTHS) + 1) + length


def type_words(kind: str) -> List[str]:
    """The words of a mention's type: "Person/Handle" -> ["person", "handle"]."""
    return re.findall(r"[^\W\d_]+", kind.lower())


def build_type_vocabulary(mentions: Iterable[Mention], size: int) -> List[str]:
    """The `size` most frequent type words (seen at least MIN_TYPE_WORD_COUNT
    times), ties in alphabetical order."""
    counts = Counter(word for mention in mentions for word in type_words(mention.type))
    frequent = sorted((-n, word) for word, n in counts.items() if n >= MIN_TYPE_WORD_COUNT)
    return [word for _, word in frequent[:size]]


@dataclass
class TokenFeatures:
    """Feature ids of every token of a batch, in the batch's token order."""

    shape: torch.Tensor  # (n_tokens,)
    mention_position: torch.Tensor  # (n_tokens,): 0 outside, 1 first token, 2 inside
    mention_type: torch.Tensor  # (n_tokens, TYPE_WORDS_PER_TOKEN): type word ids, PAD-padded


def featurize(
    docs_and_mentions: Sequence[tuple], vocabulary: Sequence[str], device
) -> TokenFeatures:
    """TokenFeatures for (doc, mentions) pairs; `vocabulary` lists the known type words."""
    word_index = {word: i + 2 for i, word in enumerate(vocabulary)}
    shapes, positions, types = [], [], []
    for doc, mentions in docs_and_mentions:
        words = [token.text for token in doc]
        shapes.extend(shape_id(word) for word in words)
        for aligned in align_mentions(words, mentions):
            ids = [PAD] * TYPE_WORDS_PER_TOKEN
            if aligned is None:
                positions.append(0)
            else:
                begins, mention = aligned
                positions.append(1 if begins else 2)
                found = type_words(mention.type)[:TYPE_WORDS_PER_TOKEN]
                ids[: len(found)] = [word_index.get(word, UNKNOWN) for word in found]
            types.append(ids)
    as_long = lambda a: torch.as_tensor(numpy.asarray(a, dtype=numpy.int64), device=device)  # noqa: E731
    return TokenFeatures(
        shape=as_long(shapes),
        mention_position=as_long(positions),
        mention_type=as_long(types).reshape(-1, TYPE_WORDS_PER_TOKEN),
    )


PLACES = ("emission", "encoder")


class TokenFeatureEmbedding(nn.Module):
    """Learned vectors for the token features: `shape_width` dimensions for the
    shape, `mention_width` for the mention (position + the sum of its type
    words). A width of 0 switches that feature off.

    A feature's place "emission" puts its vector next to the encoder's output;
    "encoder" adds it to the input embeddings of the subwords the token is
    pooled from (its first with "first" pooling, all with "mean"), so that the
    encoder reads it in context. An encoder-side feature has the
    encoder's width and starts at zero: the encoder's input is unchanged until
    training says otherwise.
    """

    def __init__(
        self,
        shape_width: int,
        mention_width: int,
        vocabulary: Sequence[str],
        shape_place: str = "emission",
        mention_place: str = "emission",
    ):
        super().__init__()
        for place in (shape_place, mention_place):
            if place not in PLACES:
                raise ValueError(f"Unknown feature place {place!r}; expected one of {PLACES}")
        self.shape_width = shape_width
        self.mention_width = mention_width
        self.vocabulary = list(vocabulary)
        self.shape_place = shape_place
        self.mention_place = mention_place
        tables = []
        if shape_width:
            self.shape = nn.Embedding(N_SHAPES, shape_width)
            tables += [self.shape] if shape_place == "encoder" else []
        if mention_width:
            self.mention_position = nn.Embedding(3, mention_width)
            self.mention_type = nn.Embedding(len(self.vocabulary) + 2, mention_width, padding_idx=PAD)
            if mention_place == "encoder":
                tables += [self.mention_position, self.mention_type]
        for table in tables:
            nn.init.zeros_(table.weight)

    def _vectors(self, features: TokenFeatures, place: str) -> List[torch.Tensor]:
        vectors = []
        if self.shape_width and self.shape_place == place:
            vectors.append(self.shape(features.shape))
        if self.mention_width and self.mention_place == place:
            vectors.append(
                self.mention_position(features.mention_position)
                + self.mention_type(features.mention_type).sum(dim=1)
            )
        return vectors

    @property
    def in_encoder(self) -> bool:
        return bool(self.shape_width and self.shape_place == "encoder") or bool(
            self.mention_width and self.mention_place == "encoder"
        )

    @property
    def width(self) -> int:
        """Dimensions added next to the encoder's output."""
        return (self.shape_width if self.shape_place == "emission" else 0) + (
            self.mention_width if self.mention_place == "emission" else 0
        )

    def encoder_vectors(self, features: TokenFeatures) -> torch.Tensor:
        """The sum of the encoder-side vectors of each token, `(n_tokens, hidden)`."""
        return sum(self._vectors(features, "encoder"))

    def forward(self, features: TokenFeatures) -> torch.Tensor:
        """The vectors that join the encoder's output, `(n_tokens, width)`."""
        return torch.cat(self._vectors(features, "emission"), dim=-1)
