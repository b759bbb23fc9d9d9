"""`spacy-ita.openai_compatible.v1`: a chat model at any OpenAI-compatible
endpoint (a hosted model, vLLM, Ollama, llama.cpp's server), the model side of
`ita_knowledge`: the client, its deadlines and byte caps, and the retries.

The API key is read from the environment variable that `api_key_env` names,
when the client is made: it is never a setting, so it never reaches a config,
the cache, a saved pipeline or a log. Each instance owns its client (made and
checked once per process, on first use), so two components never share one.
"""
import json
import logging
import os
import random
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Union
from urllib.parse import urlsplit

from spacy.util import registry

from ..context.registry import SetupError
from ..watchdog import SocketWatchdog

logger = logging.getLogger(__name__)

NAME = "spacy-ita.openai_compatible.v1"
MAX_BACKOFF = 60.0  # seconds; also the cap on a server's Retry-After
# The most bytes read of a GET /models answer (hosted APIs list hundreds of models).
MAX_LIST_BYTES = 16 << 20
# HTTP statuses after which the same request may work later (a refused key or a
# missing model, once the setup is fixed); other 4xx are final for that post.
RETRYABLE_STATUSES = (401, 403, 404, 408, 409, 429)
# The most characters of a message that quotes an endpoint (an error, an answer, model ids).
MAX_MESSAGE_CHARS = 300
# The most characters of a body that a message quotes when it is not what the API answers.
MAX_BODY_START_CHARS = 100
# Where a request carries its watchdog, cap and refusal to each response it gets.
_BOUNDS = "spacy_ita.bounds"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# What an Authorization header carries as a key: printable ASCII, no spaces.
KEY_CHARS = re.compile(r"[!-~]+")


@dataclass
class Completion:
    """A model's answer to one post, and why it stopped ("length": cut at max_tokens)."""

    text: Any
    finish_reason: Optional[str] = None


@dataclass
class CallFailure:
    """Why a post got no answer. `retryable` marks a failure that may pass (a
    server down, a timeout), so that a later run asks again."""

    reason: str
    retryable: bool = False


class _CallCapReached(Exception):
    """The run has made `max_calls` calls."""


class AnswerRefused(Exception):
    """An HTTP answer refused before it is parsed: over the byte cap (by its
    Content-Length, or as soon as that much of it was read), or compressed."""


class NotAnAnswer(Exception):
    """A 200 answer that is not what the API answers (an HTML page, cut JSON, a
    list without choices); the message is its content type and its start, key-free."""


def _is_model_list(body: Any) -> bool:
    """Whether `body` is an OpenAI model list: {"data": [{"id": "...", ...}, ...]}."""
    data = body.get("data") if isinstance(body, dict) else None
    return isinstance(data, list) and all(
        isinstance(model, dict) and isinstance(model.get("id"), str) for model in data)


def _is_chat_completion(body: Any) -> bool:
    """Whether `body` is a chat completion: {"choices": [{"message": {...}, ...}, ...]}."""
    choices = body.get("choices") if isinstance(body, dict) else None
    return (isinstance(choices, list) and bool(choices) and isinstance(choices[0], dict)
            and isinstance(choices[0].get("message"), dict))


def _openai():
    """The openai module, imported only when a client is made, with a hint if missing."""
    try:
        import openai
    except ImportError:
        raise ImportError(f"{NAME} needs the openai package: "
                          "pip install 'spacy-ita[llm]'") from None
    return openai


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
                            f"{content_encoding}) although the request asked for an "
                            "uncompressed answer")


def bounded_http_client(seconds: float, max_bytes: int) -> Any:
    """An HTTP client for the openai client whose every request must be done,
    from connecting to the last byte of the answer, redirects included, within
    `seconds`, not `seconds` per read: a SocketWatchdog shuts the connection down
    at the deadline, however slowly the server drips headers or body. Answers to
    POST (chat completions) are refused past `max_bytes` (Content-Length first,
    then while reading), so a huge answer is never read whole; a compressed one
    is not read at all, since it could decode to any size. A redirect's body is
    never read: only its Location is followed, as bulk/fetch.py does. Each
    request makes its own connection (no keep-alive): the watchdog sees every
    socket it must shut, and a late shutdown can never hit another request's
    connection."""
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

    class UnreadStream(http.SyncByteStream):
        """A redirect's body, closed unread; the watchdog runs on for the request it leads to."""

        def __init__(self, stream: Any):
            self.stream = stream

        def __iter__(self):
            return iter(())

        def close(self) -> None:
            self.stream.close()

    def bound(response: Any) -> None:
        """httpx's response hook, run on every response (each redirect's too)
        before httpx reads it: a redirect's body is left unread, any other
        answer is checked and capped."""
        if response.has_redirect_location:
            response.stream = UnreadStream(response.stream)
            return
        watchdog, too_large, cap = response.request.extensions[_BOUNDS]
        _refuse_compressed(response.headers.get("content-encoding", ""))
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > cap:
            raise too_large
        response.stream = BoundedStream(response.stream, watchdog, too_large, cap)

    class BoundedClient(openai.DefaultHttpxClient):
        def send(self, request: Any, *, stream: bool = False, **kwargs: Any) -> Any:
            watchdog = SocketWatchdog(time.monotonic() + seconds)
            cap, limit = ((max_bytes, "max_answer_bytes") if request.method == "POST"
                          else (MAX_LIST_BYTES, "the limit for a model list"))
            too_large = AnswerRefused(f"answer refused: over {limit} ({cap:,} bytes)")
            # Redirect requests get copies of these extensions.
            request.extensions["trace"] = partial(_watch_connection, watchdog)
            request.extensions[_BOUNDS] = (watchdog, too_large, cap)
            try:
                response = super().send(request, stream=True, **kwargs)
            except BaseException as err:
                watchdog.stop()
                if watchdog.fired and isinstance(err, http.TransportError):
                    raise timed_out() from None
                raise
            try:
                if not stream:
                    response.read()
            except BaseException:
                watchdog.stop()
                response.close()
                raise
            return response

    return BoundedClient(timeout=seconds, headers={"Accept-Encoding": "identity"},
                         limits=http.Limits(max_keepalive_connections=0),
                         event_hooks={"response": [bound]})


class OpenAICompatible:
    """Sends chat requests to `base_url`, `max_concurrency` at a time, each
    retried with backoff while it may pass; a post whose call fails gets a
    CallFailure, never an exception. Setup problems (key, URL, model) raise
    SetupError before any post is sent."""

    name = NAME

    def __init__(self, *, model: str, base_url: str, api_key_env: Optional[str],
                 json_mode: bool, temperature: float, max_tokens: Optional[int],
                 max_answer_bytes: int, max_concurrency: int, timeout: float,
                 max_retries: int, backoff: float, max_calls: Optional[int]):
        if not re.match(r"^https?://", base_url):
            raise ValueError(f"{NAME}: base_url must start with http:// or https://, "
                             f"got {base_url!r}")
        if "@" in urlsplit(base_url).netloc:  # user:key@host would reach configs and the cache
            raise ValueError(f"{NAME}: base_url must not hold credentials (user:key@host); "
                             "put the key in an environment variable named by api_key_env")
        if api_key_env is not None and not ENV_NAME.match(api_key_env):
            # Not echoed: a key pasted here by mistake must not reach a log.
            raise ValueError(f"{NAME}: api_key_env is the NAME of the environment variable "
                             "that holds the key (letters, digits, _), not the key itself")
        for setting, value, low in (("max_tokens", max_tokens, 1),
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
        self.json_mode = json_mode
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.max_answer_bytes = max_answer_bytes
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_calls = max_calls
        self.calls = 0  # requests sent, retries included
        self.json_refused = False  # the server refused response_format in this run
        self._client: Any = None
        self._client_pid: Optional[int] = None
        self._lock = threading.Lock()

    def __getstate__(self) -> Dict[str, Any]:
        """Without the client and the lock, which cannot be pickled into
        --n-process workers: each worker makes and checks its own client."""
        state = dict(self.__dict__)
        state.update(_client=None, _client_pid=None)
        del state["_lock"]
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def settings(self) -> Dict[str, Any]:
        """What changes the answer, for the cache key."""
        return {"base_url": self.base_url, "model": self.model, "json_mode": self.json_mode,
                "temperature": self.temperature, "max_tokens": self.max_tokens}

    # -- the client -------------------------------------------------------------

    def _api_key(self) -> Optional[str]:
        """The key from the environment, read when the client is made, never kept here."""
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            raise SetupError(
                f"{NAME}: the environment variable {self.api_key_env} (api_key_env) is not "
                "set or empty; export the API key in it, or set api_key_env to null for a "
                "server that needs no key")
        if not KEY_CHARS.fullmatch(key):  # not echoed: the HTTP library would quote it whole
            raise SetupError(
                f"{NAME}: the environment variable {self.api_key_env} (api_key_env) holds "
                "spaces, line breaks or other characters that an HTTP header cannot carry; "
                "it must hold one key of printable ASCII (a key file of several lines?)")
        return key

    def _key_forms(self) -> List[str]:
        """The API key as a server or an HTTP library may quote it: as it is and
        escaped by repr() (of the text or its bytes) or JSON, longest first;
        none for no key or one under 4 characters, which would mask ordinary text."""
        key = os.environ.get(self.api_key_env or "", "").strip()
        if len(key) < 4:
            return []
        return sorted({key, repr(key)[1:-1], repr(key.encode("utf-8"))[2:-1],
                       json.dumps(key)[1:-1]}, key=len, reverse=True)

    def echoes_key(self, *texts: str) -> bool:
        """Whether any of `texts` holds the API key, in any form `scrub` masks."""
        forms = self._key_forms()
        return any(form in text for text in texts for form in forms)

    def scrub(self, text: str) -> str:
        """`text` fit for a one-line message: the API key masked (in each of its
        quoted forms), should a server echo it, runs of whitespace (line breaks)
        made one space, then cut to MAX_MESSAGE_CHARS; masked first, so that no
        cut leaves part of the key."""
        for form in self._key_forms():
            text = text.replace(form, "***")
        return " ".join(text.split())[:MAX_MESSAGE_CHARS]

    def _json(self, raw: Any, fits: Callable[[Any], bool]) -> Any:
        """The JSON body of `raw` (openai's raw response) when `fits` says it has
        the API's shape; else NotAnAnswer quoting its content type and start."""
        try:
            body = json.loads(raw.content)
            if fits(body):
                return body
        except (ValueError, RecursionError):  # not JSON, cut, nested too deep, a huge number
            pass
        content_type = raw.headers.get("content-type", "no content type")
        start = self.scrub(raw.content.decode("utf-8", "replace"))[:MAX_BODY_START_CHARS]
        raise NotAnAnswer(self.scrub(f"({content_type}): {start!r}"))

    def load(self) -> Any:
        """This instance's client, made and checked once per process: a missing
        key, an unreachable URL, a URL without an OpenAI-compatible API, a
        refused key or a model the server does not serve fails here, before
        any post is sent."""
        with self._lock:
            if self._client is None or self._client_pid != os.getpid():
                key = self._api_key()
                http_client = bounded_http_client(self.timeout, self.max_answer_bytes)
                client = _openai().OpenAI(base_url=self.base_url, api_key=key or "none",
                                          timeout=self.timeout, max_retries=0,
                                          http_client=http_client)
                self._check(client)
                self._client, self._client_pid = client, os.getpid()
            return self._client

    def _check(self, client: Any) -> None:
        """GET /models: fail with a readable reason unless the endpoint answers,
        takes the key and serves the model."""
        openai = _openai()
        where = f"{NAME}: {self.base_url}"
        try:
            raw = self._with_retries(client.models.with_raw_response.list, count=False)
            served = [model["id"] for model in self._json(raw, _is_model_list)["data"]]
        except NotAnAnswer as err:
            raise SetupError(f"{where}/models did not answer an OpenAI model list {err}") from None
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
            listed = self.scrub(", ".join(sorted(served)[:20]))
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
        """A short, key-free reason for a failed call (see `scrub`)."""
        openai = _openai()
        if isinstance(err, openai.APITimeoutError):
            reason = f"timed out after {self.timeout:g}s"
        elif isinstance(err, openai.APIStatusError):
            reason = f"HTTP {err.status_code}: {err.message}"
        else:
            cause = err.__cause__ or err.__context__
            reason = f"{err}" + (f" ({cause})" if cause is not None else "")
        return self.scrub(reason)

    # -- posts ----------------------------------------------------------------------

    def _create(self, client: Any, messages: List[Dict[str, Any]]) -> Any:
        """One chat completion, as openai's raw response; JSON mode is dropped
        for the rest of the run if the server refuses it (HTTP 400) and the
        same request works without."""
        openai = _openai()
        options: Dict[str, Any] = {"model": self.model, "messages": messages,
                                   "temperature": self.temperature}
        if self.max_tokens is not None:
            options["max_tokens"] = self.max_tokens
        create = client.chat.completions.with_raw_response.create
        json_mode = self.json_mode and not self.json_refused
        if json_mode:
            options["response_format"] = {"type": "json_object"}
        try:
            return self._with_retries(lambda: create(**options))
        except openai.BadRequestError:
            if not json_mode:
                raise
        del options["response_format"]
        response = self._with_retries(lambda: create(**options))
        if not self.json_refused:
            self.json_refused = True
            logger.warning("%s: %s refused response_format json_object; asking without it",
                           NAME, self.base_url)
        return response

    def ask(self, client: Any, messages: List[Dict[str, Any]]) -> Union[Completion, CallFailure]:
        """The answer to one post's messages, or why there is none. An answer
        that is not a chat completion (a gateway's error page) may pass."""
        openai = _openai()
        try:
            choice = self._json(self._create(client, messages), _is_chat_completion)["choices"][0]
            return Completion(choice["message"].get("content"), choice.get("finish_reason"))
        except NotAnAnswer as err:
            return CallFailure(f"the answer is not a chat completion {err}", retryable=True)
        except _CallCapReached:
            return CallFailure(f"max_calls ({self.max_calls}) reached: no more calls "
                               "in this run", retryable=True)
        except (openai.APIConnectionError, openai.APIStatusError) as err:
            return CallFailure(self._reason(err), retryable=self._may_pass(err))
        except AnswerRefused as err:
            return CallFailure(self._reason(err))
        except Exception as err:  # this post's failure, not the batch's
            return CallFailure(self.scrub(f"{type(err).__name__}: {err}"))

    def __call__(self, prompts: List[List[Dict[str, Any]]]
                 ) -> List[Union[Completion, CallFailure]]:
        """The answers to a batch of posts' messages, in order."""
        client = self.load()
        workers = max(1, min(self.max_concurrency, len(prompts)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda messages: self.ask(client, messages), prompts))


@registry.misc(NAME)
def make_openai_compatible(
    model: str,
    base_url: str,
    api_key_env: Optional[str] = None,
    json_mode: bool = True,
    temperature: float = 0.0,
    max_tokens: Optional[int] = 512,
    max_answer_bytes: int = 1 << 20,
    max_concurrency: int = 8,
    timeout: float = 60.0,
    max_retries: int = 4,
    backoff: float = 1.0,
    max_calls: Optional[int] = None,
) -> OpenAICompatible:
    """A chat model at `base_url` (an OpenAI-compatible API, e.g.
    http://localhost:8000/v1), with the key in the environment variable named
    by `api_key_env` (null: no key). Each request has `timeout` seconds for its
    whole answer, of at most `max_answer_bytes` bytes; `max_calls` caps the
    requests of a run."""
    return OpenAICompatible(
        model=model, base_url=base_url, api_key_env=api_key_env, json_mode=json_mode,
        temperature=temperature, max_tokens=max_tokens, max_answer_bytes=max_answer_bytes,
        max_concurrency=max_concurrency, timeout=timeout, max_retries=max_retries,
        backoff=backoff, max_calls=max_calls)
