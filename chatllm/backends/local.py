"""The local llama.cpp model as a backend: `LlamaCppChat` (LangChain's view of the engine)
and `LocalBackend`.

llama.cpp itself runs in a supervised child process: `chatllm.engine.client` is the line
in front of it (`LocalEngine`), `chatllm.engine.process` starts and watches it,
`chatllm.engine.worker` is the child.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict

from chatllm.backends.base import (
    TEMPLATE_TOKENS_PER_MESSAGE,
    Backend,
    draw_seed,
    register,
)
from chatllm.config import Settings
from chatllm.engine.client import LocalEngine, local_engine
from chatllm.engine.worker import RECORD_TOP
from chatllm.errors import (
    UnknownModel,
)
from chatllm.sampling import Sampling
from chatllm.streaming import usage_listener

log = logging.getLogger("chatllm")


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
    #: candidates to record with each token (the X-ray: chatllm.engine.tokens); 0: none
    record_top: int = 0

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
        if self.record_top:
            params[RECORD_TOP] = self.record_top
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
        async with aclosing(self._astream(messages, stop, run_manager, **kwargs)) as chunks:
            async for chunk in chunks:
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
    ) -> AsyncGenerator[ChatGenerationChunk]:
        request = self._request(stop)
        # Closed here, not left to the garbage collector, when the consumer stops early.
        async with aclosing(self.engine.stream(_as_dicts(messages), request)) as deltas:
            heard = usage_listener.get()
            async for delta, finish, usage in deltas:
                if usage is not None and heard is not None:
                    heard(usage)
                info = (
                    {
                        "finish_reason": finish,
                        "model_name": self.model_name,
                        "seed": request["seed"],
                    }
                    if finish
                    else None
                )
                message = AIMessageChunk(
                    content=delta,
                    # Once, on the last chunk: LangChain adds up the chunks' usage.
                    usage_metadata=usage.as_metadata() if usage and finish else None,  # type: ignore[arg-type]
                )
                chunk = ChatGenerationChunk(message=message, generation_info=info)
                if run_manager is not None and delta:
                    await run_manager.on_llm_new_token(delta, chunk=chunk)
                yield chunk


def _as_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    return [{"role": _role(m), "content": m.text} for m in messages]


@register
class LocalBackend(Backend):
    name = "local"

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.local_backend

    @property
    def engine(self) -> LocalEngine:
        return local_engine(self.settings)

    async def models(self) -> list[str]:
        """The local model, unless its engine failed to start (then why, as an error); a
        failed engine is tried again in the background once its retry time has come."""
        process = self.engine.process
        if not process.ready and process.failure is not None:
            process.start_soon()  # in a thread of its own, which nobody here waits for
            raise process.failure
        return [self.settings.local_model_name]

    async def ensure_model(self, model: str) -> None:
        if model != self.settings.local_model_name:
            raise UnknownModel(model=model)

    def chat_model(self, model: str, sampling: Sampling) -> BaseChatModel:
        return LlamaCppChat(
            engine=self.engine,
            model_name=model,
            sampling=sampling,
            record_top=self.record_top(model),
        )

    def record_top(self, model: str) -> int:
        return self.settings.xray_candidates

    def context_tokens(self, model: str) -> int:
        return self.settings.n_ctx

    def count_tokens(self, messages: Sequence[BaseMessage]) -> int:
        engine = self.engine
        return sum(engine.count_tokens(m.text) + TEMPLATE_TOKENS_PER_MESSAGE for m in messages)

    def count_text(self, text: str) -> int:
        return self.engine.count_tokens(text)

    async def prepare_counts(self, messages: Sequence[BaseMessage]) -> None:
        await self.engine.prepare_counts([m.text for m in messages])
