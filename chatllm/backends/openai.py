"""Any OpenAI-compatible endpoint: `EndpointChat` (langchain-openai's chat model, its
failures as this app's errors), the error mapping, and `OpenAIBackend`."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from typing import Any, cast

import httpx2
import openai
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage, BaseMessageChunk
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_openai import ChatOpenAI
from openai._constants import RAW_RESPONSE_HEADER
from openai._httpx2 import request_exceptions, timeout_exceptions
from openai._streaming_cleanup import drain_response_async
from pydantic import Field

from chatllm.backends.base import (
    TEMPLATE_TOKENS_PER_MESSAGE,
    Backend,
    TokensMissing,
    draw_seed,
    register,
)
from chatllm.config import Settings
from chatllm.errors import (
    BackendAuthError,
    BackendError,
    BackendTimeout,
    BackendUnreachable,
    ContextOverflow,
    EndpointNotFound,
    UnknownModel,
)
from chatllm.sampling import Sampling
from chatllm.streaming import tokens_listener
from chatllm.xray.records import TextTokens

log = logging.getLogger("chatllm")


class EndpointChat(ChatOpenAI):
    """`ChatOpenAI` whose failures arrive as this app's `BackendError`s.

    The wait for each streamed chunk is bounded by the request timeout here, with
    `asyncio.timeout`, and langchain-openai's own bound (`stream_chunk_timeout`) is off: it
    wraps every chunk in `asyncio.wait_for`, which on Python 3.11 loses a cancellation that
    arrives as a chunk does (CPython gh-86296, fixed in 3.12). A Stop pressed then was
    ignored, and the reply ran on, or waited out the timeout on a stalled server (seen under
    load: 4 of 25 stops).
    """

    stream_chunk_timeout: float | None = Field(default=None, exclude=True)
    #: Told once whether the endpoint sent the token probabilities asked for (the X-ray's):
    #: "sent", "refused" or "ignored" (chatllm.backends.openai.OpenAIBackend remembers).
    on_logprobs: Callable[[str], None] | None = Field(default=None, exclude=True)

    def _error(self, exc: openai.APIError) -> BackendError:
        """This app's error for a failed request of this model's."""
        return endpoint_error(exc, self.openai_api_base, self.request_timeout, self.model_name)

    async def _astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        timeout = self.request_timeout if isinstance(self.request_timeout, int | float) else None
        try:
            chunks = cast(AsyncGenerator[ChatGenerationChunk], self._chunks(*args, **kwargs))
            async with aclosing(chunks):
                while True:
                    try:
                        async with asyncio.timeout(timeout):
                            chunk = await anext(chunks)
                    except StopAsyncIteration:
                        return
                    except TimeoutError:
                        raise BackendTimeout(float(timeout or 0)) from None
                    yield chunk
        except openai.APIError as exc:
            raise self._error(exc) from exc

    async def _chunks(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        """The reply's chunks, as langchain-openai's `_astream` makes them from the same
        request, but read from the stream's lines directly.

        The openai client turns every streamed chunk into a pydantic model, which
        langchain-openai turns back into a dict, and first walks the request through its
        type-directed transform: a third of the app's CPU for a streamed reply (40 tokens:
        30 ms through `ChatOpenAI`'s own, 16-20 ms this way; bench/stream_cpu.py). The request
        still goes through the client (its retries, headers and errors); only the
        decoding differs. What the server sends is decoded as the client would: `data:`
        lines until `[DONE]`, an `error` object raised as an `APIError`."""
        kwargs["stream"] = True
        if self._should_stream_usage(None, **kwargs):
            kwargs["stream_options"] = {"include_usage": True}
        payload = self._get_request_payload(messages, stop=stop, **kwargs)
        if "response_format" in payload or self.include_response_headers:
            async for chunk in super()._astream(messages, stop, run_manager, **kwargs):
                yield chunk
            return
        # What the client's `create` does with these before it posts the body.
        extra_body = payload.pop("extra_body", None) or {}
        options: dict[str, Any] = {"headers": {RAW_RESPONSE_HEADER: "stream"}}
        for option in ("extra_headers", "extra_query", "timeout"):
            if (value := payload.pop(option, None)) is not None:
                options[option.removeprefix("extra_")] = value

        async def post() -> httpx2.Response:
            return await self.root_async_client.post(  # type: ignore[no-any-return]
                "/chat/completions",
                body={**payload, **extra_body},
                cast_to=httpx2.Response,
                options=cast(Any, options),
            )

        asked = bool(payload.get("logprobs"))
        try:
            response = await post()
        except openai.BadRequestError:
            if not asked:
                raise
            # A server that takes no `logprobs`: asked again without, and told.
            payload.pop("logprobs", None)
            payload.pop("top_logprobs", None)
            response = await post()
            asked = False
            self._told_logprobs("refused")
        heard = tokens_listener.get() if asked else None
        recorder = TextTokens(int(payload.get("top_logprobs") or 0)) if heard else None
        given = spoke = False
        chunk_class: type[BaseMessageChunk] = AIMessageChunk
        try:
            async for event, data in _server_sent_events(response):
                if data.startswith("[DONE]"):
                    # The rest of the body read, so that the connection is used again.
                    if response.http_version == "HTTP/1.1":
                        await drain_response_async(response)
                    break
                chunk = json.loads(data)
                if isinstance(chunk, dict) and chunk.get("error"):
                    error = chunk["error"]
                    message = error.get("message") if isinstance(error, dict) else None
                    raise openai.APIError(
                        message=str(message or error or "An error occurred during streaming"),
                        request=response.request,
                        body=error,
                    )
                if event is not None and event != "error":
                    continue  # not a chat completion chunk
                for choice in chunk.get("choices") or []:
                    choice.setdefault("delta", {})
                    spoke = spoke or bool(choice["delta"].get("content"))
                    content = (choice.get("logprobs") or {}).get("content")
                    if content:
                        given = True
                        if recorder is not None and heard is not None:
                            heard(*recorder.take(content))
                generation = self._convert_chunk_to_generation_chunk(chunk, chunk_class, {})
                if generation is None:
                    continue
                chunk_class = generation.message.__class__
                if run_manager:  # as langchain-openai's own: for a caller that passes one
                    logprobs = (generation.generation_info or {}).get("logprobs")
                    await run_manager.on_llm_new_token(
                        generation.text, chunk=generation, logprobs=logprobs
                    )
                yield generation
            if asked and (given or spoke):  # a reply of no text tells nothing
                self._told_logprobs("sent" if given else "ignored")
        finally:
            await response.aclose()

    def _told_logprobs(self, what: str) -> None:
        if self.on_logprobs is not None:
            self.on_logprobs(what)

    async def _agenerate(self, *args: Any, **kwargs: Any) -> ChatResult:
        try:
            return await super()._agenerate(*args, **kwargs)
        except openai.APIError as exc:
            raise self._error(exc) from exc


async def _server_sent_events(response: httpx2.Response) -> AsyncIterator[tuple[str | None, str]]:
    """(event, data) of each server-sent event in a streamed response."""
    event: str | None = None
    data: list[str] = []
    lines = response.aiter_lines()
    while True:
        try:
            line = await anext(lines)
        except StopAsyncIteration:
            break
        except timeout_exceptions() as exc:  # as the openai client words them
            raise openai.APITimeoutError(request=response.request) from exc
        except request_exceptions() as exc:
            raise openai.APIConnectionError(request=response.request) from exc
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = None, []
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value
    if data:
        yield event, "\n".join(data)


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


#: Endpoints (base URL, model) that were asked for token probabilities and refused the
#: request or answered without them: not asked again while the app runs.
LOGPROBS_MISSING: dict[tuple[str, str], TokensMissing] = {}

#: Sampling values OpenAI's API has (the others are extras, which llama.cpp-style servers
#: read: sent where the operator allows).
OPENAI_SAMPLING = frozenset(
    {"temperature", "top_p", "max_tokens", "seed", "presence_penalty", "frequency_penalty"}
)


@register
class OpenAIBackend(Backend):
    name = "openai"

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

    #: an endpoint sends token texts, not ids
    token_ids = "text"

    def record_top(self, model: str) -> int:
        if (self.base_url, model) in LOGPROBS_MISSING:
            return 0  # told once: not asked again
        return self.settings.xray_candidates

    def why_no_records(self, model: str) -> TokensMissing:
        return LOGPROBS_MISSING.get((self.base_url, model), "off")

    def _heard_logprobs(self, model: str, what: str) -> None:
        if what in ("refused", "ignored"):
            LOGPROBS_MISSING[(self.base_url, model)] = cast(TokensMissing, what)
            log.info("The endpoint %s %s token probabilities for %s", self.base_url, what, model)

    def chat_model(self, model: str, sampling: Sampling) -> BaseChatModel:
        top = self.record_top(model)
        recording: dict[str, Any] = {"logprobs": True, "top_logprobs": top} if top else {}
        params = sampling.generation_params()
        if params["seed"] is None:
            params["seed"] = draw_seed()
        standard = {k: v for k, v in params.items() if k in OPENAI_SAMPLING}
        extra = {k: v for k, v in params.items() if k not in OPENAI_SAMPLING}
        # langchain-openai sends the reply limit as `max_completion_tokens`, OpenAI's newer
        # name, which llama-cpp-python's server (0.3.x) ignores: its replies then ran to the
        # end of the context whatever the slider said. Servers of that family read the
        # older `max_tokens`, sent with the other extras.
        extra["max_tokens"] = params["max_tokens"]
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
            on_logprobs=lambda what: self._heard_logprobs(model, what),
            **recording,
            **standard,
        )

    def not_sent(self, sampling: Sampling) -> list[str]:
        if self.settings.openai_send_extra_sampling:
            return []
        return [k for k in sampling.generation_params() if k not in OPENAI_SAMPLING]

    def context_tokens(self, model: str) -> int:
        return self.settings.openai_context_tokens

    def count_tokens(self, messages: Sequence[BaseMessage]) -> int:
        # The endpoint's tokenizer is unknown here; an estimate that leans high.
        return count_tokens_approximately(
            messages, chars_per_token=3.0, extra_tokens_per_message=TEMPLATE_TOKENS_PER_MESSAGE
        )

    def count_text(self, text: str) -> int:
        return math.ceil(len(text) / 3.0)
