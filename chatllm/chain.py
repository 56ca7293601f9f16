"""The LangChain chain: prompt (system, history, message) | fit to context | model | parser."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import Any, cast

from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage
from langchain_core.messages.utils import trim_messages
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.prompt_values import PromptValue
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda, RunnableSequence
from langchain_core.runnables.config import (
    ensure_config,
    get_async_callback_manager_for_config,
    patch_config,
)
from langchain_core.tracers._streaming import _StreamingCallbackHandler

from chatllm.errors import ContextOverflow

TokenCounter = Callable[[Sequence[BaseMessage]], int]
CountPreparer = Callable[[Sequence[BaseMessage]], Awaitable[None]]

PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "{system}"),
        MessagesPlaceholder("history"),
        ("human", "{message}"),
    ]
)


class TextParser(StrOutputParser):
    """`StrOutputParser` that parses each streamed chunk inline.

    langchain-core's async parser sends every chunk through the default thread pool
    (`run_in_executor` per token), an extra thread hop and event-loop wake for each token;
    at ~8 ms a token that alone costs the app ~1 % of llama.cpp's speed (bench/stream.py).
    And as a step of a streamed chain it reports its own run to the callbacks, awaiting
    each chunk in an asyncio task of its own (for the run's context): a task and a turn of
    the event loop per token, which under load is where tokens wait (bench/load.py). It
    has nothing of its own to report (the model's run has the reply) and needs no context,
    so it streams without either; `ainvoke` and the other paths are langchain-core's.
    """

    async def _atransform(self, input: AsyncIterator[str | BaseMessage]) -> AsyncIterator[str]:
        async for chunk in input:
            yield chunk.text if isinstance(chunk, BaseMessage) else chunk

    async def atransform(
        self,
        input: AsyncIterator[str | BaseMessage],
        config: RunnableConfig | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[str]:
        async for text in self._atransform(input):
            yield text


class Chain(RunnableSequence[dict[str, object], str]):
    """`RunnableSequence` whose stream hands each chunk on in the caller's own task.

    langchain-core's awaits every chunk of a streamed sequence in a new asyncio task of its
    own, so that code inside the steps finds the sequence's run in its context (tracers
    that look for their parent run there). This chain's steps get their config from the
    sequence, as arguments, and nothing here traces by context; the task per token cost
    1-2.5 ms of CPU per 40-token reply, 8-15 % of the whole reply's (bench/stream_cpu.py:
    12.7-13.8 ms against 11.6-11.9 without, in runs side by side). The sequence's run is
    still reported to the callbacks: its start, then its end with the whole output, or
    its error (a Stop's too, which langchain-core's leaves unreported). Streams that
    collect the run's own output (`astream_log`, `astream_events`) take langchain-core's
    way, as does every other way of running it."""

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        config = ensure_config(config)
        callback_manager = get_async_callback_manager_for_config(config)
        if any(isinstance(h, _StreamingCallbackHandler) for h in callback_manager.handlers):
            async for chunk in super().astream(input, config, **kwargs):
                yield chunk
            return
        run_manager = await callback_manager.on_chain_start(
            None,
            {"input": ""},
            name=config.get("run_name") or self.get_name(),
            run_id=config.pop("run_id", None),
        )
        child_config = patch_config(config, callbacks=run_manager.get_child())

        async def only_input() -> AsyncIterator[Any]:
            yield input

        output: Any = None
        try:
            chunks = cast(
                AsyncGenerator[Any],
                self._atransform(only_input(), run_manager, child_config, **kwargs),
            )
            async with aclosing(chunks):
                async for chunk in chunks:
                    yield chunk
                    output = chunk if output is None else output + chunk
        except BaseException as exc:
            await run_manager.on_chain_error(exc, inputs=input)
            raise
        await run_manager.on_chain_end(output, inputs=input)


class ReplyRecord(AsyncCallbackHandler):
    """What the model received (the prompt after trimming) and reported about a reply once
    it ended: why it ended (finish_reason), and whatever else its generation info carries
    (model, seed, token usage).

    Inline: its methods only note what they are given, and otherwise langchain-core would
    give every event, each streamed token's included, an asyncio task of its own
    (`asyncio.gather`), for a handler that ignores tokens."""

    run_inline = True

    def __init__(self) -> None:
        self.info: dict[str, Any] = {}
        self.prompt: list[BaseMessage] = []

    async def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], **kwargs: Any
    ) -> None:
        self.prompt = list(messages[0]) if messages else []

    async def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        for generation in response.generations[0] if response.generations else []:
            self.info.update(generation.generation_info or {})
            if isinstance(generation, ChatGeneration):
                message = generation.message
                self.info.update(message.response_metadata)
                if isinstance(message, AIMessage) and message.usage_metadata:
                    self.info["usage_metadata"] = dict(message.usage_metadata)

    @property
    def usage(self) -> tuple[int, int] | None:
        """(prompt tokens, reply tokens) as the model reported them, if it did."""
        usage = self.info.get("usage_metadata")
        if not usage:
            return None
        return int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))

    @property
    def finish_reason(self) -> str | None:
        reason = self.info.get("finish_reason")
        return str(reason) if reason else None


def fit_to_context(
    messages: Sequence[BaseMessage],
    *,
    budget: int,
    count: TokenCounter,
    context: int | None = None,
) -> list[BaseMessage]:
    """Drop the oldest history, a whole exchange at a time, until the prompt fits `budget`.

    The system prompt and the new message always stay; if they alone do not fit, the
    message cannot be answered and `ContextOverflow` says by how much, and, given the
    whole `context` (the prompt's budget and the reply's room), whether a shorter reply
    would leave it room.
    """
    messages = [m for m in messages if not (isinstance(m, SystemMessage) and not m.text.strip())]
    if count(messages) <= budget:
        return messages
    latest = messages[-1]
    system = [m for m in messages[:1] if isinstance(m, SystemMessage)]
    needed = count([*system, latest])
    if needed > budget:
        raise ContextOverflow(needed=needed, available=max(budget, 0), context=context)
    trimmed = trim_messages(
        messages,
        max_tokens=budget,
        token_counter=count,
        strategy="last",
        include_system=bool(system),
        start_on="human",
        allow_partial=False,
    )
    if not trimmed or trimmed[-1] is not latest:
        # trim_messages keeps a suffix; the newest message is in it whenever it fits.
        raise ContextOverflow(needed=needed, available=max(budget, 0), context=context)
    return trimmed


def build_chain(
    model: BaseChatModel,
    *,
    context_tokens: int,
    reply_tokens: int,
    count: TokenCounter,
    prepare: CountPreparer | None = None,
) -> Runnable[dict[str, object], str]:
    """The chain for one turn; its input is {"system", "history", "message"}.

    `prepare`, when given, is awaited with the prompt's messages before trimming, so that
    `count` (synchronous, as trim_messages wants it) finds them counted already: the local
    model's tokenizer lives in its engine process, and asking it must not block the loop.
    """
    budget = context_tokens - reply_tokens

    def fit(prompt: PromptValue) -> list[BaseMessage]:
        return fit_to_context(
            prompt.to_messages(), budget=budget, count=count, context=context_tokens
        )

    async def afit(prompt: PromptValue) -> list[BaseMessage]:
        messages = prompt.to_messages()
        if prepare is not None:
            await prepare(messages)
        return fit_to_context(messages, budget=budget, count=count, context=context_tokens)

    fitting = RunnableLambda(fit, afunc=afit, name="fit_to_context")
    return Chain(first=PROMPT, middle=[fitting, model], last=TextParser())


def chain_input(system: str, history: Sequence[BaseMessage], message: str) -> dict[str, object]:
    return {"system": system, "history": list(history), "message": message}
