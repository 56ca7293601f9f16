"""Any OpenAI-compatible endpoint: `EndpointChat` (langchain-openai's chat model, its
failures as this app's errors), the error mapping, and `OpenAIBackend`."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any, cast

import openai
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_openai import ChatOpenAI
from pydantic import Field

from chatllm.backends.base import TEMPLATE_TOKENS_PER_MESSAGE, Backend, draw_seed, register
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

    def _error(self, exc: openai.APIError) -> BackendError:
        """This app's error for a failed request of this model's."""
        return endpoint_error(exc, self.openai_api_base, self.request_timeout, self.model_name)

    async def _astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        timeout = self.request_timeout if isinstance(self.request_timeout, int | float) else None
        try:
            chunks = cast(AsyncGenerator[ChatGenerationChunk], super()._astream(*args, **kwargs))
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

    async def _agenerate(self, *args: Any, **kwargs: Any) -> ChatResult:
        try:
            return await super()._agenerate(*args, **kwargs)
        except openai.APIError as exc:
            raise self._error(exc) from exc


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


OPENAI_SAMPLING = frozenset({"temperature", "top_p", "max_tokens", "seed"})


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

    def chat_model(self, model: str, sampling: Sampling) -> BaseChatModel:
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
