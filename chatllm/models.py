"""The model backends, each behind one factory that returns a LangChain chat model.

Backends register themselves in `BACKENDS`; callers ask `Backends.chat_model(...)` and never
import a backend class. A backend's chat model raises only `chatllm.errors.BackendError`s.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import re
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import openai
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_openai import ChatOpenAI
from pydantic import ConfigDict

from chatllm.config import Settings
from chatllm.errors import (
    BackendAuthError,
    BackendError,
    BackendTimeout,
    BackendUnreachable,
    ChatLLMError,
    ConfigError,
    ContextOverflow,
    EndpointNotFound,
    UnknownModel,
)
from chatllm.sampling import SEED_MAX, Sampling

QueueListener = Callable[[int], Awaitable[None]]

#: Set by whoever runs a turn to hear how many requests wait ahead of it on the local model
#: (called with 0 once generation starts). A context variable, so it reaches the chat model
#: through LangChain's runnables without widening their signatures.
queue_listener: contextvars.ContextVar[QueueListener | None] = contextvars.ContextVar(
    "queue_listener", default=None
)

#: Prompts are evaluated in chunks of this many tokens, and the KV cache is reused in whole
#: chunks only (see LocalEngine._reuse_exactly). Prompt speed is the same from 32 to 512.
PROMPT_CHUNK = 32

# Tokens a chat template adds around each message (role markers, separators). Counted on
# top of the content so that trimming errs on the side of room for the reply.
TEMPLATE_TOKENS_PER_MESSAGE = 8


def draw_seed() -> int:
    return secrets.randbelow(SEED_MAX + 1)


@dataclass(frozen=True)
class Usage:
    """Tokens one generation took: the prompt as the model received it, and the reply."""

    prompt_tokens: int
    completion_tokens: int

    def as_metadata(self) -> dict[str, int]:
        """LangChain's `usage_metadata` form, as ChatOpenAI reports it too."""
        return {
            "input_tokens": self.prompt_tokens,
            "output_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


#: A piece of a streamed reply: its text, and on the last piece why it ended and its usage.
Delta = tuple[str, str | None, Usage | None]


class _Meter:
    """Counts the tokens of one generation, and stops it on request.

    llama-cpp-python streams no token usage. Every completion runs `Llama.generate`, which
    takes the prompt's tokens and yields each sampled token; `LocalEngine` wraps it with
    `count`, so the counts are exact and a stop takes effect before the next token is even
    detokenized.
    """

    __slots__ = ("completion_tokens", "prompt_tokens", "stop")

    def __init__(self, stop: threading.Event | None) -> None:
        self.stop = stop
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def count(
        self,
        generate: Callable[..., Iterator[int]],
        is_end: Callable[[int], bool],
        before: Callable[[Sequence[int]], None],
    ) -> Callable[..., Iterator[int]]:
        def metered(tokens: Sequence[int], *args: Any, **kwargs: Any) -> Iterator[int]:
            self.prompt_tokens = len(tokens)
            before(tokens)
            for token in generate(tokens, *args, **kwargs):
                if self.stop is not None and self.stop.is_set():
                    return
                if not is_end(token):  # the end-of-generation token is not part of the reply
                    self.completion_tokens += 1
                yield token

        return metered

    def usage(self) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens)


@dataclass(frozen=True)
class ProfileSpec:
    """One choice in the chat-profile menu: a backend and a model it serves."""

    backend: str
    model: str

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.model}"

    @classmethod
    def parse(cls, name: str) -> ProfileSpec:
        backend, _, model = name.partition(":")
        return cls(backend=backend, model=model)


# --------------------------------------------------------------------------------------
# Local: llama.cpp


class _Ticket:
    """A place in the line for the local model."""

    __slots__ = ("moved",)

    def __init__(self) -> None:
        self.moved = asyncio.Event()


class LocalEngine:
    """One llama.cpp model for the whole process, serving one generation at a time.

    llama.cpp crashes when two threads decode on one context, so every call into the
    model runs on a single worker thread; the asyncio line in front of it lets a waiting
    request say how many are ahead of it.
    """

    def __init__(self, model_path: Path, n_ctx: int, n_threads: int | None = None) -> None:
        from llama_cpp import Llama  # imported here: loading the library takes a moment

        self.model_path = model_path
        self.llama = Llama(
            model_path=str(model_path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_batch=PROMPT_CHUNK,
            verbose=False,
        )
        self.n_ctx = n_ctx
        self._generate_tokens = self.llama.generate  # bound before any wrapping
        # The start of the KV cache known to hold exactly what evaluating it afresh gives.
        self._exact: Any = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self._line: list[_Ticket] = []
        # Trimming a long thread counts the same messages on every turn, and several times
        # within one (trim_messages bisects); each text is tokenized once.
        self.count_tokens = lru_cache(maxsize=16384)(self._count_tokens)

    def _reuse_exactly(self, prompt: Sequence[int]) -> None:
        """Let llama.cpp reuse only the part of its KV cache that a fresh evaluation of
        `prompt` would compute bit for bit, so a reply depends on its prompt, settings and
        seed alone (a replay with the same seed gives the same text).

        llama-cpp-python reuses the longest cached prefix of the prompt, but cached values
        depend on how they were computed: the previous reply's tokens one at a time, the
        prompt in chunks. Evaluated in other chunks, the floating-point sums differ in the
        last bits, and a sampled token can flip (5 of 8 replays differed in a test here).
        Prompts are evaluated in PROMPT_CHUNK-token chunks from position 0; only whole
        chunks of earlier prompts are reused, so a turn re-evaluates fewer than
        PROMPT_CHUNK extra tokens (~0.1 s here) instead of the whole conversation.
        """
        import numpy as np

        llama = self.llama
        exact = self._exact
        reusable = 0
        if exact is not None and len(exact) <= llama.n_tokens:
            limit = min(len(exact), len(prompt) - 1)  # the last token is always evaluated
            cached = llama.input_ids[:limit]
            if np.array_equal(cached, exact[:limit]):  # nobody else used the cache since
                mismatch = np.flatnonzero(cached != np.asarray(prompt[:limit]))
                common = int(mismatch[0]) if len(mismatch) else limit
                reusable = common - common % PROMPT_CHUNK
        llama.n_tokens = reusable
        whole = len(prompt) - len(prompt) % PROMPT_CHUNK
        self._exact = np.asarray(prompt[:whole], dtype=llama.input_ids.dtype)

    def _count_tokens(self, text: str) -> int:
        return len(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Wait in line for the model, telling `queue_listener` the position as it moves.

        Leaving the line wakes the others synchronously, so a request cancelled while it
        leaves (a second Stop, a closed tab) cannot strand the ones behind it; notices go
        out with no lock held, so a slow socket delays only its own request.
        """
        listener = queue_listener.get()
        ticket = _Ticket()
        self._line.append(ticket)
        try:
            reported = 0
            while (ahead := self._line.index(ticket)) > 0:
                if listener is not None and ahead != reported:
                    await listener(ahead)
                    reported = ahead
                ticket.moved.clear()
                if self._line.index(ticket) == ahead:  # the line did not move meanwhile
                    await ticket.moved.wait()
            if listener is not None and reported:
                await listener(0)
            yield
        finally:
            self._line.remove(ticket)
            for waiting in self._line:
                waiting.moved.set()

    async def stream(
        self, messages: list[dict[str, str]], params: dict[str, Any]
    ) -> AsyncIterator[Delta]:
        """Yield (text delta, finish reason, usage) from the model, in turn with other
        callers; the finish reason and usage come with the last delta.

        Closing or cancelling the iteration stops the generation before its next token.
        """
        async with self.turn():
            loop = asyncio.get_running_loop()
            # The worker appends to `pending` (deque appends are thread-safe) and wakes the
            # loop; each wake takes everything waiting, so a consumer that fell behind
            # catches up in one chunk instead of paying LangChain's per-chunk cost per token.
            pending: deque[Delta | BaseException | None] = deque()
            arrived = asyncio.Event()
            stop = threading.Event()

            def produce() -> None:
                try:
                    for delta_finish in self._generate(messages, params, stop):
                        pending.append(delta_finish)
                        loop.call_soon_threadsafe(arrived.set)
                except BaseException as exc:  # handed to the event loop, raised there
                    pending.append(exc)
                finally:
                    pending.append(None)
                    loop.call_soon_threadsafe(arrived.set)

            done = loop.run_in_executor(self._worker, produce)
            try:
                finished = False
                while not finished:
                    await arrived.wait()
                    arrived.clear()
                    text, finish, usage = "", None, None
                    while pending:
                        item = pending.popleft()
                        if item is None:
                            finished = True
                            break
                        if isinstance(item, BaseException):
                            raise _local_error(item, self.n_ctx) from item
                        text, finish, usage = text + item[0], item[1] or finish, item[2] or usage
                    if text or finish:
                        yield text, finish, usage
            finally:
                stop.set()
                # The line moves on only once llama.cpp has really stopped; a second
                # cancellation while waiting is allowed to end the wait.
                await asyncio.shield(done)

    def generate(self, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
        """Blocking, whole-reply generation on the worker thread (for sync callers)."""

        def run() -> str:
            return "".join(delta for delta, _, _ in self._generate(messages, params, None))

        try:
            return self._worker.submit(run).result()
        except ValueError as exc:
            raise _local_error(exc, self.n_ctx) from exc

    def _generate(
        self,
        messages: list[dict[str, str]],
        params: dict[str, Any],
        stop: threading.Event | None,
    ) -> Iterator[Delta]:
        import llama_cpp

        meter = _Meter(stop)
        vocab = self.llama._model.vocab

        def is_end(token: int) -> bool:
            return bool(llama_cpp.llama_vocab_is_eog(vocab, token))

        # An instance attribute shadowing the method; only this worker thread calls it.
        self.llama.generate = meter.count(  # type: ignore[method-assign,assignment]
            self._generate_tokens, is_end, self._reuse_exactly
        )
        stream = self.llama.create_chat_completion(
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            **params,
        )
        try:
            for chunk in stream:
                if stop is not None and stop.is_set():
                    return
                choice: dict[str, Any] = chunk["choices"][0]  # type: ignore[index,assignment]
                delta: str = choice["delta"].get("content") or ""
                finish: str | None = choice.get("finish_reason")
                if delta or finish:
                    yield delta, finish, meter.usage() if finish else None
        finally:
            stream.close()  # type: ignore[union-attr]
            del self.llama.generate  # the method again, for anyone using the Llama directly


def _local_error(exc: BaseException, n_ctx: int) -> BaseException:
    """llama-cpp-python's ValueError/RuntimeError as this app's errors; anything else (a
    bug) goes up as it is, to be logged with its traceback."""
    text = str(exc)
    if isinstance(exc, ValueError) and "exceed context window" in text:
        match = re.search(r"\((\d+)\)", text)
        return ContextOverflow(needed=int(match[1]) if match else n_ctx + 1, available=n_ctx)
    if isinstance(exc, ValueError | RuntimeError):
        return BackendError(f"llama.cpp failed: {text or type(exc).__name__}")
    return exc


def _role(message: BaseMessage) -> str:
    return {"human": "user", "ai": "assistant", "system": "system"}.get(message.type, "user")


class LlamaCppChat(BaseChatModel):
    """A LangChain chat model over the process's `LocalEngine`.

    Written here rather than using langchain-community's `ChatLlamaCpp`, which streams
    slower (75-89 % of raw llama-cpp-python's tokens/s; bench/stream.py prints it beside
    this path), loads its own copy of the model, and takes its seed only when the model
    loads; this one shares the process's model and passes every sampling value per call.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    engine: LocalEngine
    model_name: str
    sampling: Sampling

    @property
    def _llm_type(self) -> str:
        return "chatllm-llama-cpp"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, **self._params()}

    def _params(self) -> dict[str, Any]:
        params = self.sampling.generation_params()
        if params["seed"] is None:
            params["seed"] = draw_seed()
        return params

    def _request(self, stop: list[str] | None) -> dict[str, Any]:
        params = self._params()
        if stop:
            params["stop"] = stop
        return params

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = self.engine.generate(_as_dicts(messages), self._request(stop))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        parts: list[str] = []
        info: dict[str, Any] = {}
        async for chunk in self._astream(messages, stop, run_manager, **kwargs):
            parts.append(chunk.text)
            info.update(chunk.generation_info or {})
        message = AIMessageChunk(content="".join(parts), response_metadata=info)
        return ChatResult(generations=[ChatGeneration(message=message, generation_info=info)])

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        request = self._request(stop)
        async for delta, finish, usage in self.engine.stream(_as_dicts(messages), request):
            info = (
                {"finish_reason": finish, "model_name": self.model_name, "seed": request["seed"]}
                if finish
                else None
            )
            message = AIMessageChunk(
                content=delta,
                usage_metadata=usage.as_metadata() if usage else None,  # type: ignore[arg-type]
            )
            chunk = ChatGenerationChunk(message=message, generation_info=info)
            if run_manager is not None and delta:
                await run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk


def _as_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    return [{"role": _role(m), "content": m.text} for m in messages]


# --------------------------------------------------------------------------------------
# OpenAI-compatible endpoints


class EndpointChat(ChatOpenAI):
    """`ChatOpenAI` whose failures arrive as this app's `BackendError`s."""

    def _error(self, exc: openai.APIError) -> BackendError:
        return endpoint_error(exc, self.openai_api_base, self.request_timeout, self.model_name)

    async def _astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        try:
            async for chunk in super()._astream(*args, **kwargs):
                yield chunk
        except openai.APIError as exc:
            raise endpoint_error(
                exc, self.openai_api_base, self.request_timeout, self.model_name
            ) from exc

    async def _agenerate(self, *args: Any, **kwargs: Any) -> ChatResult:
        try:
            return await super()._agenerate(*args, **kwargs)
        except openai.APIError as exc:
            raise endpoint_error(
                exc, self.openai_api_base, self.request_timeout, self.model_name
            ) from exc


def endpoint_error(
    exc: openai.APIError, url: str | None, timeout: Any, model: str | None = None
) -> BackendError:
    """This app's error for a failed request to an endpoint."""
    url = url or ""
    if isinstance(exc, openai.APITimeoutError):
        return BackendTimeout(seconds=float(timeout) if isinstance(timeout, int | float) else 0)
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return BackendUnreachable(url=url, detail=str(cause) or type(cause).__name__)
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return BackendAuthError(status=exc.status_code)
    if isinstance(exc, openai.NotFoundError):
        # A 404 naming the model is an unknown model; any other 404 is a wrong address.
        if model and "model" in str(exc).lower():
            return UnknownModel(model=model)
        return EndpointNotFound(url=url)
    if isinstance(exc, openai.BadRequestError) and "context" in str(exc).lower():
        return ContextOverflow()
    status = getattr(exc, "status_code", None)
    return BackendError(f"HTTP {status}: {exc.message}" if status else exc.message)


# --------------------------------------------------------------------------------------
# The registry


class Backend(ABC):
    """A source of chat models. Subclasses register with `@register`."""

    kind: ClassVar[str]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        """Whether these settings turn this backend on."""
        return True

    @abstractmethod
    async def models(self) -> list[str]:
        """The models this backend offers now."""

    async def ensure_model(self, model: str) -> None:
        """Raise `UnknownModel` if this backend does not serve `model`."""
        if model not in await self.models():
            raise UnknownModel(model=model)

    @abstractmethod
    def chat_model(self, model: str, sampling: Sampling) -> BaseChatModel:
        """A chat model that replies with `sampling`'s values."""

    @abstractmethod
    def context_tokens(self, model: str) -> int:
        """How many tokens the model's context holds, prompt and reply together."""

    @abstractmethod
    def count_tokens(self, messages: Sequence[BaseMessage]) -> int:
        """Tokens `messages` take in the prompt, template overhead included."""

    @abstractmethod
    def count_text(self, text: str) -> int:
        """Tokens `text` takes (for a reply whose usage the model did not report)."""


BACKENDS: dict[str, type[Backend]] = {}


def register(cls: type[Backend]) -> type[Backend]:
    BACKENDS[cls.kind] = cls
    return cls


_engines: dict[tuple[Path, int, int | None], LocalEngine] = {}
_engines_lock = threading.Lock()


def local_engine(settings: Settings) -> LocalEngine:
    """The process's llama.cpp model, loaded on first use and then shared."""
    key = (settings.resolve_model_path(), settings.n_ctx, settings.n_threads)
    with _engines_lock:
        if key not in _engines:
            try:
                _engines[key] = LocalEngine(*key)
            except (ValueError, RuntimeError, OSError) as exc:
                raise ConfigError(
                    f"The model file {str(key[0])!r} could not be loaded ({exc}). Set "
                    "CHATLLM_MODEL_PATH to a GGUF model file, or leave it empty to use the "
                    "embedded model."
                ) from exc
        return _engines[key]


@register
class LocalBackend(Backend):
    kind = "local"

    @property
    def engine(self) -> LocalEngine:
        return local_engine(self.settings)

    async def models(self) -> list[str]:
        return [self.settings.local_model_name]

    def chat_model(self, model: str, sampling: Sampling) -> BaseChatModel:
        return LlamaCppChat(engine=self.engine, model_name=model, sampling=sampling)

    def context_tokens(self, model: str) -> int:
        return self.settings.n_ctx

    def count_tokens(self, messages: Sequence[BaseMessage]) -> int:
        engine = self.engine
        return sum(engine.count_tokens(m.text) + TEMPLATE_TOKENS_PER_MESSAGE for m in messages)

    def count_text(self, text: str) -> int:
        return self.engine.count_tokens(text)


#: Sampling values the OpenAI API itself defines; others (top_k, repeat_penalty) go in the
#: request body as extras, which llama.cpp-style servers read.
OPENAI_SAMPLING = frozenset({"temperature", "top_p", "max_tokens", "seed"})


@register
class OpenAIBackend(Backend):
    kind = "openai"

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return bool(settings.openai_base_url)

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._models: tuple[float, list[str]] | None = None

    @property
    def base_url(self) -> str:
        if not self.settings.openai_base_url:
            raise BackendError("No OpenAI-compatible endpoint is configured.")
        return self.settings.openai_base_url

    def _api_key(self) -> str:
        # The openai client refuses an empty key; many self-hosted servers want none.
        return self.settings.openai_api_key.get_secret_value() or "not-needed"

    async def models(self) -> list[str]:
        """The endpoint's `/v1/models`, cached briefly; the configured list if one is set."""
        if self.settings.openai_models:
            return list(self.settings.openai_models)
        now = time.monotonic()
        if self._models and now - self._models[0] < self.settings.openai_models_cache_seconds:
            return self._models[1]
        client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=self._api_key(),
            timeout=self.settings.openai_timeout,
            max_retries=0,
        )
        try:
            page = await client.models.list()
            names = sorted(model.id for model in page.data)
        except openai.APIError as exc:
            raise endpoint_error(exc, self.base_url, self.settings.openai_timeout) from exc
        finally:
            await client.close()
        self._models = (now, names)
        return names

    def chat_model(self, model: str, sampling: Sampling) -> BaseChatModel:
        params = sampling.generation_params()
        if params["seed"] is None:
            params["seed"] = draw_seed()
        standard = {k: v for k, v in params.items() if k in OPENAI_SAMPLING}
        extra = {k: v for k, v in params.items() if k not in OPENAI_SAMPLING}
        return EndpointChat(
            base_url=self.base_url,
            api_key=self._api_key(),  # type: ignore[arg-type]
            model=model,
            timeout=self.settings.openai_timeout,
            max_retries=self.settings.openai_max_retries,
            streaming=True,
            # Token usage on the last streamed chunk, for servers that send it; the receipt
            # estimates the counts for those that do not (llama-cpp-python's).
            stream_usage=True,
            extra_body=extra if extra and self.settings.openai_send_extra_sampling else None,
            **standard,
        )

    def context_tokens(self, model: str) -> int:
        return self.settings.openai_context_tokens

    def count_tokens(self, messages: Sequence[BaseMessage]) -> int:
        # The endpoint's tokenizer is unknown here; an estimate that leans high.
        return count_tokens_approximately(
            messages, chars_per_token=3.0, extra_tokens_per_message=TEMPLATE_TOKENS_PER_MESSAGE
        )

    def count_text(self, text: str) -> int:
        return math.ceil(len(text) / 3.0)


class Backends:
    """The backends this configuration enables, by kind."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._by_kind: dict[str, Backend] = {
            kind: cls(settings) for kind, cls in BACKENDS.items() if cls.enabled(settings)
        }

    def get(self, kind: str) -> Backend:
        try:
            return self._by_kind[kind]
        except KeyError:
            raise BackendError(f"The backend {kind!r} is not configured.") from None

    def __iter__(self) -> Iterator[Backend]:
        return iter(self._by_kind.values())

    async def profiles(self) -> tuple[list[ProfileSpec], list[ChatLLMError]]:
        """Every (backend, model) choice, and the errors of backends that could not list theirs."""
        specs: list[ProfileSpec] = []
        problems: list[ChatLLMError] = []
        for backend in self:
            try:
                specs.extend(ProfileSpec(backend.kind, name) for name in await backend.models())
            except BackendError as exc:
                problems.append(exc)
        return specs, problems
