"""`spacy-ita.llm_knowledge.v1`: knowledge about a post from a language model
at any OpenAI-compatible endpoint (a hosted model, vLLM, Ollama, llama.cpp's
server), for the `knowledge` slot of `ita_context`.

The model is asked for the post's entity mentions, each with a type from the
pipeline's labels, as JSON; the answer is stored in the compact form
`X (type) ; Y (type)` that `ita_ner` reads best (see `spacy_ita.knowledge.mentions`).
The API key is read from the environment variable that `api_key_env` names,
when the client is made: it is never a setting, so it never reaches a config,
the cache, a saved pipeline or a log.
"""
import base64
import hashlib
import io
import json
import logging
import os
import random
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from spacy.tokens import DocBin
from spacy.vocab import Vocab

from ..knowledge.mentions import Mention, parse_mentions, render_mentions
from ..visual_context import get_visual_context
from ..watchdog import SocketWatchdog
from .registry import (Extractor, ExtractorFailure, ImageRecord, PartialContext, SetupError,
                       extractors)

logger = logging.getLogger(__name__)

NAME = "spacy-ita.llm_knowledge.v1"
# Short descriptions of common NER labels; other labels need one in `labels`.
LABEL_DESCRIPTIONS = {
    "PER": "a person (real or fictional), or a person's account or name",
    "LOC": "a location: a place, city, country, region, venue or landmark",
    "ORG": "an organization: a company, team, band, party, institution or media outlet",
    "OTHER": "another named entity: an event, product, work, brand, holiday or nationality",
    "MISC": "another named entity: an event, product, work, brand, holiday or nationality",
}
DEFAULT_LABELS = ["PER", "LOC", "ORG", "OTHER"]
DEFAULT_SYSTEM_PROMPT = """\
You find the named entities that a social media post mentions. The post may \
come with a description of its image; use it to decide what an entity is, but \
list only entities written in the post itself, spelled as in the post.
{labels}
Answer with JSON only, in this form:
{"entities": [{"text": "<the entity as written in the post>", "type": "<its type>"}]}
If the post names no entity, answer {"entities": []}."""
DEFAULT_PROMPT = "Post: {text}\n{context}"
# The placeholders each template may use. They are `{name}`, not `$name`: spaCy
# doubles a `$` each time it saves and loads a config.
PLACEHOLDERS = {"system_prompt": ("labels",), "prompt": ("text", "context", "labels")}
# What the context fields are called in the prompt, in the order they are given.
CONTEXT_NAMES = (("captions", "Image caption"), ("object_tags", "Objects in the image"),
                 ("ocr_text", "Text in the image"))
MAX_BACKOFF = 60.0  # seconds; also the cap on a server's Retry-After
# The most bytes read of a GET /models answer (hosted APIs list hundreds of models).
MAX_LIST_BYTES = 16 << 20
# HTTP statuses after which the same request may work later (a refused key or a
# missing model, once the setup is fixed); other 4xx are final for that post.
RETRYABLE_STATUSES = (401, 403, 404, 408, 409, 429)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_FENCE = re.compile(r"```[a-zA-Z]*\s*(.*?)```", re.DOTALL)
# Characters that would break the compact form `X (type) ; Y`.
_NOT_IN_MENTIONS = re.compile(r"[();\s]+")
_TEXT_KEYS = ("text", "mention", "name", "entity")
_TYPE_KEYS = ("type", "label", "category")
_LIST_KEYS = ("entities", "mentions", "named_entities")

# Clients, one per process and endpoint, made and checked by `load`.
_CLIENTS: Dict[Tuple, Any] = {}
_CLIENTS_LOCK = threading.Lock()


class AnswerError(ValueError):
    """An answer that is not a list of entities."""


class _CallCapReached(Exception):
    """The run has made `max_calls` calls."""


class AnswerRefused(Exception):
    """An HTTP answer refused before it is parsed: over the byte cap (by its
    Content-Length, or as soon as that much of it was read), or compressed."""


def _openai():
    """The openai module, imported only when a client is made, with a hint if missing."""
    try:
        import openai
    except ImportError:
        raise ImportError(f"{NAME} needs the openai package: "
                          "pip install 'spacy-ita[llm]'") from None
    return openai


def check_template(setting: str, template: str) -> None:
    """Fail on a `{name}` placeholder that `setting` does not know, say a typo."""
    unknown = sorted(set(_PLACEHOLDER.findall(template)) - set(PLACEHOLDERS[setting]))
    if unknown:
        allowed = ", ".join("{%s}" % name for name in PLACEHOLDERS[setting])
        raise ValueError(f"{NAME}: {setting} has an unknown placeholder {{{unknown[0]}}}; "
                         f"it may use {allowed}")


def fill_template(template: str, values: Dict[str, str]) -> str:
    """`template` with each known `{name}` replaced; other braces (JSON) stay."""
    return _PLACEHOLDER.sub(lambda match: values.get(match.group(1), match.group(0)), template)


def label_table(labels: Union[Sequence[str], Dict[str, str]]) -> Dict[str, str]:
    """Labels with their descriptions ("" when none is known)."""
    if isinstance(labels, dict):
        return {str(label): str(text) for label, text in labels.items()}
    return {label: LABEL_DESCRIPTIONS.get(label, "") for label in labels}


def describe_labels(labels: Dict[str, str]) -> str:
    """The `{labels}` part of a prompt."""
    if not labels:
        return "Give each entity a short type, such as person, location or organization."
    lines = [f"- {label}: {text}" if text else f"- {label}" for label, text in labels.items()]
    return "Give each entity one of these types:\n" + "\n".join(lines)


def describe_context(context: Optional[Dict[str, List[str]]]) -> str:
    """The `{context}` part of a prompt: what the image slots found, one field a line."""
    lines = []
    for field, name in CONTEXT_NAMES:
        items = [text.strip() for text in (context or {}).get(field, []) if text.strip()]
        if items:
            lines.append(f"{name}: {' | '.join(items)}")
    return "\n".join(lines)


def entities_json(mentions: Sequence[Mention]) -> str:
    """An answer in the form the default prompt asks for."""
    items = [{"text": mention.text, "type": mention.type} for mention in mentions]
    return json.dumps({"entities": items}, ensure_ascii=False)


def parse_answer(answer: str, labels: Sequence[str] = ()) -> List[Mention]:
    """The mentions in a model's answer: JSON (bare, in a code fence or after
    some prose; `{"entities": [...]}` or a bare list of `{"text", "type"}`
    objects, `[text, type]` pairs or `"X (type)"` strings), else the text form
    `X (type) ; Y (type)`. A type matching a label but for case is spelled as
    the label; brackets and `;` become spaces, so the compact form stays
    readable. Raises AnswerError when JSON is there but not entities."""
    fenced = _FENCE.search(answer)
    text = (fenced.group(1) if fenced else answer).strip()
    data: Any = None
    if text[:1] in ("{", "["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise AnswerError(f"invalid JSON: {err}") from None
    elif "{" in text:  # prose, then the JSON object
        try:
            data, _ = json.JSONDecoder().raw_decode(text[text.index("{"):])
        except json.JSONDecodeError:
            pass
    mentions = parse_mentions(text) if data is None else _json_mentions(data)
    by_lower = {label.lower(): label for label in labels}
    cleaned = [Mention(_NOT_IN_MENTIONS.sub(" ", m.text).strip(),
                       by_lower.get(m.type.lower(), _NOT_IN_MENTIONS.sub(" ", m.type).strip()))
               for m in mentions]
    return list(dict.fromkeys(m for m in cleaned if m.text))


def _json_mentions(data: Any) -> List[Mention]:
    """The mentions in parsed JSON, in any of the shapes `parse_answer` accepts."""
    if isinstance(data, dict):
        found = [data[key] for key in _LIST_KEYS if key in data]
        if not found:
            raise AnswerError(f"expected {{\"entities\": [...]}}, got keys {sorted(data)[:5]}")
        data = found[0]
    if not isinstance(data, list):
        raise AnswerError(f"expected a list of entities, got {type(data).__name__}")
    mentions = []
    for item in data:
        if isinstance(item, str):
            mentions += parse_mentions(item)
        elif isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item):
            mentions.append(Mention(*item))
        elif isinstance(item, dict):
            text = next((item[key] for key in _TEXT_KEYS if isinstance(item.get(key), str)), None)
            kind = next((item[key] for key in _TYPE_KEYS if isinstance(item.get(key), str)), "")
            if text is None:
                raise AnswerError(f"entity without a text: {json.dumps(item)[:80]}")
            mentions.append(Mention(text, kind))
        else:
            raise AnswerError(f"unexpected entity {json.dumps(item)[:80]}")
    return mentions


def image_data_url(image: Any) -> str:
    """A PIL image as a base64 JPEG data URL."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def load_examples(path: str, n: int, labels: Sequence[str]) -> List[Tuple[str, Dict, str]]:
    """Up to n (text, context, answer) few-shot examples from a .spacy file:
    posts with gold entities, first one for each label in turn, then the next
    posts in file order; the answer lists the gold entities."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{NAME}: examples_path {path} does not exist")
    docs = [doc for doc in DocBin().from_disk(path).get_docs(Vocab()) if doc.ents]
    chosen: List[int] = []
    for label in labels:
        first = next((i for i, doc in enumerate(docs) if i not in chosen
                      and any(ent.label_ == label for ent in doc.ents)), None)
        if first is not None and len(chosen) < n:
            chosen.append(first)
    chosen += [i for i in range(len(docs)) if i not in chosen][: n - len(chosen)]
    examples = []
    for i in sorted(chosen):
        doc = docs[i]
        context = get_visual_context(doc)
        found = {} if context is None else context.to_dict()
        answer = entities_json([Mention(ent.text, ent.label_) for ent in doc.ents])
        examples.append((doc.text, found, answer))
    return examples


def _http_module(openai: Any) -> Any:
    """The HTTP library the openai client is built on (httpx2 from openai 3 on, httpx before)."""
    base = next(cls for cls in openai.DefaultHttpxClient.__mro__ if cls.__name__ == "Client")
    return sys.modules[base.__module__.split(".")[0]]


def _watch_connection(watchdog: SocketWatchdog, event: str, info: Dict[str, Any]) -> None:
    """httpx's `trace` hook: the socket of each connection a request makes goes
    to the request's watchdog."""
    if event == "connection.connect_tcp.complete":
        watchdog.watch(info["return_value"].get_extra_info("socket"))


def _refuse_compressed(content_encoding: str) -> None:
    """Refuse an answer compressed although the request asked for none
    (Accept-Encoding: identity): the byte cap counts the bytes received, and a
    200 KB gzip answer decodes to 200 MB before it could be counted."""
    codings = [coding.strip() for coding in content_encoding.lower().split(",")]
    if any(coding not in ("", "identity") for coding in codings):
        raise AnswerRefused(f"answer refused: compressed (Content-Encoding: "
                            f"{content_encoding[:40]}) although the request asked for an "
                            "uncompressed answer")


def bounded_http_client(seconds: float, max_bytes: int) -> Any:
    """An HTTP client for the openai client whose every request must be done,
    from connecting to the last byte of the answer, within `seconds`, not
    `seconds` per read: a SocketWatchdog shuts the connection down at the
    deadline, however slowly the server drips headers or body. Answers to POST (chat
    completions) are refused past `max_bytes` (Content-Length first, then while
    reading), so a huge answer is never read whole; a compressed one is not
    read at all, since it could decode to any size. Each request makes its own
    connection (no keep-alive): the watchdog sees every socket it must shut,
    and a late shutdown can never hit another request's connection."""
    openai = _openai()
    http = _http_module(openai)

    def timed_out() -> Exception:
        return http.ReadTimeout(f"no whole answer within {seconds:g}s")

    class BoundedStream(http.SyncByteStream):
        def __init__(self, stream: Any, watchdog: SocketWatchdog, too_large: AnswerRefused,
                     cap: int):
            self.stream, self.watchdog, self.too_large, self.cap = stream, watchdog, too_large, cap

        def __iter__(self):
            received = 0
            try:
                for chunk in self.stream:
                    received += len(chunk)
                    if received > self.cap:
                        raise self.too_large
                    yield chunk
            except http.TransportError:
                if not self.watchdog.fired:
                    raise
            if self.watchdog.fired:  # also when the shutdown read as the end of the body
                raise timed_out()

        def close(self) -> None:
            self.watchdog.stop()
            self.stream.close()

    class BoundedClient(openai.DefaultHttpxClient):
        def send(self, request: Any, *, stream: bool = False, **kwargs: Any) -> Any:
            watchdog = SocketWatchdog(time.monotonic() + seconds)
            request.extensions["trace"] = partial(_watch_connection, watchdog)
            try:
                response = super().send(request, stream=True, **kwargs)
            except BaseException as err:
                watchdog.stop()
                if watchdog.fired and isinstance(err, http.TransportError):
                    raise timed_out() from None
                raise
            cap, limit = ((max_bytes, "max_answer_bytes") if request.method == "POST"
                          else (MAX_LIST_BYTES, "the limit for a model list"))
            too_large = AnswerRefused(f"answer refused: over {limit} ({cap:,} bytes)")
            try:
                _refuse_compressed(response.headers.get("content-encoding", ""))
                length = response.headers.get("content-length", "")
                if length.isdigit() and int(length) > cap:
                    raise too_large
                response.stream = BoundedStream(response.stream, watchdog, too_large, cap)
                if not stream:
                    response.read()
            except BaseException:
                watchdog.stop()
                response.close()
                raise
            return response

    return BoundedClient(timeout=seconds, headers={"Accept-Encoding": "identity"},
                         limits=http.Limits(max_keepalive_connections=0))


class LLMKnowledge(Extractor):
    """Asks a chat model at an OpenAI-compatible endpoint for each post's entity
    mentions, `max_concurrency` posts at a time, with retries; a post whose
    call fails gets an ExtractorFailure, never an exception."""

    name = NAME
    needs_pixels = False

    def __init__(self, *, model: str, base_url: str, api_key_env: Optional[str],
                 send_image: bool, labels: Union[Sequence[str], Dict[str, str]],
                 system_prompt: str, prompt: str, examples_path: Optional[str],
                 n_examples: int, json_mode: bool, temperature: float,
                 max_tokens: Optional[int], max_answer_chars: int, max_answer_bytes: int,
                 max_concurrency: int, timeout: float, max_retries: int, backoff: float,
                 max_calls: Optional[int]):
        if not re.match(r"^https?://", base_url):
            raise ValueError(f"{NAME}: base_url must start with http:// or https://, "
                             f"got {base_url!r}")
        if api_key_env is not None and not _ENV_NAME.match(api_key_env):
            # Not echoed: a key pasted here by mistake must not reach a log.
            raise ValueError(f"{NAME}: api_key_env is the NAME of the environment variable "
                             "that holds the key (letters, digits, _), not the key itself")
        for setting, value, low in (("n_examples", n_examples, 0), ("max_tokens", max_tokens, 1),
                                    ("max_answer_chars", max_answer_chars, 1),
                                    ("max_answer_bytes", max_answer_bytes, 1),
                                    ("max_concurrency", max_concurrency, 1),
                                    ("max_retries", max_retries, 0), ("max_calls", max_calls, 0)):
            if value is not None and value < low:
                raise ValueError(f"{NAME}: {setting} must be at least {low}, got {value}")
        if timeout <= 0 or backoff < 0:
            raise ValueError(f"{NAME}: timeout must be positive and backoff not negative")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.send_image = send_image
        self.labels = label_table(labels)
        check_template("system_prompt", system_prompt)
        check_template("prompt", prompt)
        self.system_prompt = system_prompt
        self.prompt = prompt
        self.examples = ([] if examples_path is None or n_examples == 0
                         else load_examples(examples_path, n_examples, list(self.labels)))
        # Hashed once: settings() is part of the cache key read for every post.
        examples_json = json.dumps(self.examples, sort_keys=True, ensure_ascii=False)
        self.examples_sha256 = hashlib.sha256(examples_json.encode("utf-8")).hexdigest()
        self.json_mode = json_mode
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.max_answer_chars = max_answer_chars
        self.max_answer_bytes = max_answer_bytes
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_calls = max_calls
        self.calls = 0  # requests sent by this extractor, retries included
        self.json_refused = False  # the server refused response_format in this run
        self._lock = threading.Lock()

    def __getstate__(self) -> Dict[str, Any]:
        """Without the lock, which cannot be pickled into --n-process workers."""
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def reads_pixels(self) -> bool:
        """Only with `send_image`: otherwise the image is never decoded for it."""
        return self.send_image

    def settings(self) -> Dict[str, Any]:
        """What changes the answer, for the cache key; the examples as a hash."""
        return {"base_url": self.base_url, "model": self.model, "send_image": self.send_image,
                "labels": self.labels, "system_prompt": self.system_prompt,
                "prompt": self.prompt, "json_mode": self.json_mode,
                "examples": self.examples_sha256,
                "temperature": self.temperature, "max_tokens": self.max_tokens}

    # -- the client -------------------------------------------------------------

    def _api_key(self) -> Optional[str]:
        """The key from the environment, read at each load, never kept on the extractor."""
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            raise SetupError(
                f"{NAME}: the environment variable {self.api_key_env} (api_key_env) is not "
                "set or empty; export the API key in it, or set api_key_env to null for a "
                "server that needs no key")
        return key

    def _scrub(self, text: str) -> str:
        """`text` with the API key, should a server echo it, masked."""
        key = os.environ.get(self.api_key_env or "", "").strip()
        return text.replace(key, "***") if len(key) >= 4 else text

    def load(self) -> Any:
        """The client for this endpoint, made and checked once per process: a
        missing key, an unreachable URL, a URL without an OpenAI-compatible API,
        a refused key or a model the server does not serve fails here, before
        any post is sent."""
        key = self._api_key()
        cache_key = (os.getpid(), self.base_url, key, self.timeout, self.model,
                     self.max_answer_bytes)
        with _CLIENTS_LOCK:
            if cache_key not in _CLIENTS:
                http_client = bounded_http_client(self.timeout, self.max_answer_bytes)
                client = _openai().OpenAI(base_url=self.base_url, api_key=key or "none",
                                          timeout=self.timeout, max_retries=0,
                                          http_client=http_client)
                self._check(client)
                _CLIENTS[cache_key] = client
            return _CLIENTS[cache_key]

    def _check(self, client: Any) -> None:
        """GET /models: fail with a readable reason unless the endpoint answers,
        takes the key and serves the model."""
        openai = _openai()
        where = f"{NAME}: {self.base_url}"
        try:
            served = [model.id for model in self._with_retries(client.models.list, count=False)]
        except openai.APIConnectionError as err:
            raise SetupError(f"{where} cannot be reached ({self._reason(err)}); is the server "
                               "running and the URL right?") from None
        except openai.APIStatusError as err:
            if err.status_code in (401, 403):
                needs = (f"refused the key in {self.api_key_env}" if self.api_key_env
                         else "needs an API key: set api_key_env to the name of the "
                              "environment variable that holds it")
                raise SetupError(f"{where} {needs} (HTTP {err.status_code})") from None
            if err.status_code == 404:
                raise SetupError(f"{where}/models answered 404: no OpenAI-compatible API "
                                   "there (the URL usually ends in /v1)") from None
            raise SetupError(f"{where}/models answered {self._reason(err)}") from None
        except (openai.APIError, AnswerRefused) as err:
            raise SetupError(f"{where}/models: {self._reason(err)}") from None
        if served and not ({self.model, f"{self.model}:latest"} & set(served)):
            listed = ", ".join(sorted(served)[:20])
            raise SetupError(f"{where} does not serve model {self.model!r}; it serves: {listed}")

    def preflight(self) -> None:
        """The key is set and the endpoint answers and serves the model (see `load`)."""
        self.load()

    # -- one call, with retries ---------------------------------------------------

    def _with_retries(self, call, count: bool = True) -> Any:
        """call(), retried after 429, 408, 409, 5xx, timeouts and connection
        errors, with exponential backoff; counted against max_calls."""
        openai = _openai()
        for attempt in range(self.max_retries + 1):
            if count:
                with self._lock:
                    if self.max_calls is not None and self.calls >= self.max_calls:
                        raise _CallCapReached()
                    self.calls += 1
            try:
                return call()
            except (openai.APIConnectionError, openai.APIStatusError) as err:
                status = getattr(err, "status_code", None)
                retryable = status is None or status in (408, 409, 429) or status >= 500
                if not retryable or attempt == self.max_retries:
                    raise
                delay = self._delay(attempt, err)
                logger.info("%s: %s; retry %d of %d in %.2fs", NAME, self._reason(err),
                            attempt + 1, self.max_retries, delay)
                time.sleep(delay)

    def _delay(self, attempt: int, err: Exception) -> float:
        """Seconds before retry `attempt`: exponential, jittered, at least the
        server's Retry-After, at most MAX_BACKOFF."""
        delay = self.backoff * 2 ** attempt * random.uniform(0.5, 1.0)
        response = getattr(err, "response", None)
        try:
            delay = max(delay, float(response.headers.get("retry-after")))
        except (AttributeError, TypeError, ValueError):
            pass
        return min(delay, MAX_BACKOFF)

    @staticmethod
    def _may_pass(err: Exception) -> bool:
        """Whether a failed call may work later: no answer at all (timeout,
        connection), a server error, or a status a fixed setup or a calmer
        server clears (RETRYABLE_STATUSES)."""
        status = getattr(err, "status_code", None)
        return status is None or status >= 500 or status in RETRYABLE_STATUSES

    def _reason(self, err: Exception) -> str:
        """A short, key-free reason for a failed call."""
        openai = _openai()
        if isinstance(err, openai.APITimeoutError):
            reason = f"timed out after {self.timeout:g}s"
        elif isinstance(err, openai.APIStatusError):
            reason = f"HTTP {err.status_code}: {err.message[:200]}"
        else:
            cause = err.__cause__ or err.__context__
            reason = f"{err}" + (f" ({cause})" if cause is not None else "")
        return self._scrub(reason)

    # -- posts ----------------------------------------------------------------------

    def messages(self, record: ImageRecord) -> List[Dict[str, Any]]:
        """The chat messages for one post: the system prompt, the few-shot
        examples as user/assistant turns, and the post (with its image)."""
        labels = describe_labels(self.labels)

        def user(text: str, context: Optional[Dict[str, List[str]]]) -> str:
            values = {"text": text, "context": describe_context(context), "labels": labels}
            return fill_template(self.prompt, values).strip()

        messages: List[Dict[str, Any]] = [
            {"role": "system", "content": fill_template(self.system_prompt, {"labels": labels})}]
        for text, context, answer in self.examples:
            messages += [{"role": "user", "content": user(text, context)},
                         {"role": "assistant", "content": answer}]
        content: Any = user(record.text or "", record.context)
        if self.send_image and record.image is not None:
            content = [{"type": "text", "text": content},
                       {"type": "image_url", "image_url": {"url": image_data_url(record.image)}}]
        messages.append({"role": "user", "content": content})
        return messages

    def _create(self, client: Any, messages: List[Dict[str, Any]]) -> Any:
        """One chat completion; JSON mode is dropped for the rest of the run if
        the server refuses it (HTTP 400) and the same request works without."""
        openai = _openai()
        options: Dict[str, Any] = {"model": self.model, "messages": messages,
                                   "temperature": self.temperature}
        if self.max_tokens is not None:
            options["max_tokens"] = self.max_tokens
        json_mode = self.json_mode and not self.json_refused
        if json_mode:
            options["response_format"] = {"type": "json_object"}
        try:
            return self._with_retries(lambda: client.chat.completions.create(**options))
        except openai.BadRequestError:
            if not json_mode:
                raise
        del options["response_format"]
        response = self._with_retries(lambda: client.chat.completions.create(**options))
        if not self.json_refused:
            self.json_refused = True
            logger.warning("%s: %s refused response_format json_object; asking without it",
                           NAME, self.base_url)
        return response

    def ask(self, client: Any, record: ImageRecord) -> Union[PartialContext, ExtractorFailure]:
        """The knowledge for one post, or why there is none."""
        openai = _openai()
        try:
            response = self._create(client, self.messages(record))
            choice = response.choices[0]
            answer, finish = choice.message.content, choice.finish_reason
        except _CallCapReached:
            return ExtractorFailure(f"max_calls ({self.max_calls}) reached: no more calls "
                                    "in this run", retryable=True)
        except (openai.APIConnectionError, openai.APIStatusError) as err:
            return ExtractorFailure(self._reason(err), retryable=self._may_pass(err))
        except AnswerRefused as err:
            return ExtractorFailure(self._reason(err))
        except Exception as err:  # an answer that is not a chat completion, say
            return ExtractorFailure(self._scrub(f"{type(err).__name__}: {err}"))
        if not isinstance(answer, str) or not answer.strip():
            return ExtractorFailure("empty answer")
        if len(answer) > self.max_answer_chars:
            return ExtractorFailure(f"answer of {len(answer)} characters is over "
                                    f"max_answer_chars ({self.max_answer_chars})")
        try:
            mentions = parse_answer(answer, list(self.labels))
        except AnswerError as err:
            cut = " (cut at max_tokens)" if finish == "length" else ""
            return ExtractorFailure(self._scrub(f"malformed answer{cut}: {err}: {answer[:80]!r}"))
        return {"knowledge": [render_mentions(mentions)] if mentions else []}

    def __call__(self, records: List[ImageRecord]
                 ) -> List[Union[PartialContext, ExtractorFailure]]:
        client = self.load()
        workers = max(1, min(self.max_concurrency, len(records)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda record: self.ask(client, record), records))


@extractors.register(NAME)
def make_llm_knowledge(
    model: str,
    base_url: str,
    api_key_env: Optional[str] = None,
    send_image: bool = False,
    labels: Union[List[str], Dict[str, str]] = DEFAULT_LABELS,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    prompt: str = DEFAULT_PROMPT,
    examples_path: Optional[str] = None,
    n_examples: int = 4,
    json_mode: bool = True,
    temperature: float = 0.0,
    max_tokens: Optional[int] = 512,
    max_answer_chars: int = 4000,
    max_answer_bytes: int = 1 << 20,
    max_concurrency: int = 8,
    timeout: float = 60.0,
    max_retries: int = 4,
    backoff: float = 1.0,
    max_calls: Optional[int] = None,
) -> LLMKnowledge:
    """Knowledge from a chat model at `base_url` (an OpenAI-compatible API,
    e.g. http://localhost:8000/v1), with the key in the environment variable
    named by `api_key_env` (null: no key). The post, what the image slots
    found and, with `send_image`, the image itself go to the model; the
    mentions it returns become `X (type) ; Y (type)`. `labels` (names, or
    names with descriptions) are the types to use; `examples_path` a .spacy
    file whose first `n_examples` posts with entities serve as examples;
    `max_calls` caps the requests of a run. Each request has `timeout`
    seconds for its whole answer, of at most `max_answer_bytes` bytes."""
    return LLMKnowledge(
        model=model, base_url=base_url, api_key_env=api_key_env, send_image=send_image,
        labels=labels, system_prompt=system_prompt, prompt=prompt,
        examples_path=examples_path, n_examples=n_examples, json_mode=json_mode,
        temperature=temperature, max_tokens=max_tokens, max_answer_chars=max_answer_chars,
        max_answer_bytes=max_answer_bytes, max_concurrency=max_concurrency, timeout=timeout, max_retries=max_retries,
        backoff=backoff, max_calls=max_calls,
    )
