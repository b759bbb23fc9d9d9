"""What `POST /annotate` accepts: one post, or a batch under "posts", each a
text with an optional image (an http(s) URL or a data: URL) and optional
context. A malformed request is refused as a whole with a `RequestError`
whose message names the field, and the post index in a batch."""
import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError

from ..bulk.inputs import Post

URL_SCHEMES = ("http://", "https://")


class RequestError(Exception):
    """A request the server refuses: `status` is its HTTP status code."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class ContextIn(BaseModel):
    """Visual context the caller already has (say captions of its own, or a
    language model's knowledge), read by ita_ner with what the image adds."""

    model_config = ConfigDict(extra="forbid")

    captions: List[StrictStr] = Field(default_factory=list)
    object_tags: List[StrictStr] = Field(default_factory=list)
    ocr_text: List[StrictStr] = Field(default_factory=list)
    knowledge: List[StrictStr] = Field(default_factory=list)


class PostIn(BaseModel):
    """One post: its text, and optionally an image and context of its own."""

    model_config = ConfigDict(extra="forbid")

    text: StrictStr
    image: Optional[StrictStr] = None
    context: Optional[ContextIn] = None


class SingleRequest(PostIn):
    text_view: StrictBool = False  # also tag the post with the text-only view


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    posts: List[PostIn]
    text_view: StrictBool = False


@dataclass
class AnnotateRequest:
    """A parsed request: its posts (as `apply` carries them, the caller's
    context in `visual_context`), whether it was a batch, and whether the
    text-only view is wanted too."""

    posts: List[Post]
    batch: bool
    text_view: bool


@dataclass
class PostLimits:
    """How much text a post may bring: one long text or context would hold the
    single batching worker, and every other client, for minutes."""

    text_chars: int  # the post's text
    context_chars: int  # all the items of its context together, each at least 1 (even "")


def parse_request(body: bytes, max_posts: int, limits: PostLimits) -> AnnotateRequest:
    """The posts of a request body; RequestError (400 or 422) naming what is wrong."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(400, f"the body is not valid JSON: {err}") from None
    except (ValueError, RecursionError) as err:  # an integer of thousands of digits, deep nesting
        raise RequestError(400, f"the body is not JSON the server reads: {err}") from None
    if not isinstance(data, dict):
        raise RequestError(422, f"the body must be a JSON object, got {_json_type(data)}")
    batch = "posts" in data
    if batch and isinstance(data["posts"], list) and len(data["posts"]) > max_posts:
        raise RequestError(422, f"posts: {len(data['posts'])} posts, over the limit of "
                                f"{max_posts} per request (--max-posts)")
    try:
        parsed = (BatchRequest if batch else SingleRequest).model_validate(data)
    except ValidationError as err:
        raise RequestError(422, _describe(err)) from None
    if not batch:
        return AnnotateRequest([_to_post(parsed, 0, "post", "", limits)], False,
                               parsed.text_view)
    posts = [_to_post(post, i, f"posts[{i}]", f"posts[{i}].", limits)
             for i, post in enumerate(parsed.posts)]
    return AnnotateRequest(posts, True, parsed.text_view)


def _to_post(post: PostIn, index: int, where: str, field_prefix: str,
             limits: PostLimits) -> Post:
    """A validated post as `apply`'s Post, the image as a URL or the bytes of
    its data: URL, its context without empty or blank items. `where` starts
    the post's errors in its result; `field_prefix` names its fields in a refusal."""
    _check_text(post.text, f"{field_prefix}text")
    if len(post.text) > limits.text_chars:
        raise RequestError(422, f"{field_prefix}text: {len(post.text):,} characters, over the "
                                f"limit of {limits.text_chars:,} (--max-text-chars)")
    context = post.context.model_dump() if post.context is not None else None
    # An item counts as 1 at least: millions of "" cost the worker as much as text (C-level
    # sums, so that a refusal costs the event loop little).
    context_chars = sum(sum(map(len, items)) + items.count("")
                        for items in (context or {}).values())
    if context_chars > limits.context_chars:
        raise RequestError(422, f"{field_prefix}context: {context_chars:,} characters in all "
                                f"(an item counts as 1 at least), over the limit of "
                                f"{limits.context_chars:,} (--max-context-chars)")
    for name, items in (context or {}).items():
        for i, item in enumerate(items):
            _check_text(item, f"{field_prefix}context.{name}[{i}]")
    if context is not None:
        context = {name: [item for item in items if item.strip()]
                   for name, items in context.items()}
    image = None if post.image is None else image_input(post.image, f"{field_prefix}image")
    return Post(file="request", row=index, where=where, text=post.text, image=image,
                visual_context=context)


def image_input(image: str, field: str) -> Union[str, bytes]:
    """An http(s) URL as it is (the Fetcher checks and downloads it), a data:
    URL as its bytes; RequestError naming `field` for anything else."""
    scheme = image[:8].lower()  # not the whole of a data: URL of megabytes
    if scheme.startswith(URL_SCHEMES):
        return image
    if not scheme.startswith("data:"):
        raise RequestError(422, f"{field}: must be an http(s) URL or a data: URL, got "
                                f"{image[:40]!r}")
    header, comma, payload = image.partition(",")
    if not comma:
        raise RequestError(422, f"{field}: a data: URL needs a ',' before its data")
    if not header.lower().endswith(";base64"):
        raise RequestError(422, f"{field}: only base64 data: URLs are read "
                                "(data:image/...;base64,...)")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(422, f"{field}: the data: URL is not valid base64: {err}") from None


def _check_text(text: str, field: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise RequestError(422, f"{field}: contains a lone surrogate at character "
                                f"{err.start} (half of a UTF-16 pair, e.g. a cut emoji), "
                                "which is not text") from None


def _describe(err: ValidationError) -> str:
    """Pydantic's errors as `field.path[index]: what is wrong`, joined by '; '."""
    return "; ".join(f"{_path(error['loc']) or 'the body'}: {error['msg']}"
                     for error in err.errors(include_url=False))


def _path(loc: Tuple[Any, ...]) -> str:
    """The field's path; a key is cut to 60 characters (an unknown key comes from the client)."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
            continue
        name = str(part)
        name = name if len(name) <= 60 else f"{name[:60]}..."
        path += f".{name}" if path else name
    return path


def _json_type(value: Any) -> str:
    names: Dict[type, str] = {list: "an array", str: "a string", bool: "a boolean",
                              int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
