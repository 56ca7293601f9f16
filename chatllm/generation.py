"""One reply generated and measured: the chain run once, with its receipt.

Every way the app makes a reply goes through `Generation`: a chat turn, regenerate, replay,
compare and the sweep command. So every reply is measured and recorded the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import cast

from langchain_core.messages import BaseMessage

from chatllm.backends import Backend, draw_seed, queue_listener
from chatllm.chain import ReplyRecord, build_chain, chain_input
from chatllm.errors import BackendError, ChatLLMError
from chatllm.receipts import Finish, Receipt, prompt_digest
from chatllm.sampling import Sampling
from chatllm.streaming import Usage, tokens_listener, usage_listener
from chatllm.xray.records import IdSource, TokenRecords

log = logging.getLogger("chatllm")


def with_seed(sampling: Sampling) -> Sampling:
    """`sampling` with a seed: its own, or one drawn now, so the receipt can name it."""
    if sampling.seed is not None:
        return sampling
    return sampling.model_copy(update={"seed": draw_seed()})


class Generation:
    """One reply from `backend`'s `model` with `sampling`, streamed and measured.

    Iterate `stream()` for the text; afterwards (also after a cancellation or an error)
    `receipt()` tells what made it and how it went.
    """

    def __init__(self, backend: Backend, model: str, sampling: Sampling) -> None:
        self.backend = backend
        self.model = model
        self.sampling = with_seed(sampling)
        self.text = ""
        self.finish: Finish = "error"
        self.error: str | None = None
        self.record = ReplyRecord()
        self._created = time.perf_counter()
        self._requested: float | None = None  # when the chain sent the request
        self._started: float | None = None  # when the model took it (later if it waited)
        self._first: float | None = None
        self._ended: float | None = None
        self._chunks = 0
        #: The model's own counts so far, where it reports them as it goes (the local engine)
        self._counted: Usage | None = None
        #: Each token's record as the model drew it, where it records them (the local
        #: engine: chatllm.engine.tokens), joined, and the text piece of each token id they
        #: name: the sampling X-ray's
        self.tokens = bytearray()
        self.pieces: dict[int, bytes] = {}

    async def stream(self, history: Sequence[BaseMessage], message: str) -> AsyncGenerator[str]:
        """Yield the reply's text as it comes. Raises the backend's errors (`ChatLLMError`s)."""
        outer = queue_listener.get()

        async def listen(ahead: int) -> None:
            if ahead == 0:  # it waited in line and now has the model
                self._started = time.perf_counter()
            if outer is not None:
                await outer(ahead)

        token = queue_listener.set(listen)
        counting = usage_listener.set(self._note)
        recording = tokens_listener.set(self._heard_tokens)
        try:
            # Some servers (llama-cpp-python's among them) answer an unknown model name with
            # their default model; that reply would be credited to the wrong model.
            await self.backend.ensure_model(self.model)
            chain = build_chain(
                self.backend.chat_model(self.model, self.sampling),
                context_tokens=self.backend.context_tokens(self.model),
                reply_tokens=self.sampling.max_tokens,
                count=self.backend.count_tokens,
                prepare=self.backend.prepare_counts,
            )
            inputs = chain_input(self.sampling.system_prompt, history, message)
            self._requested = self._started = time.perf_counter()
            # Closed here when the consumer stops early (Stop), so the model stops at once,
            # not whenever the garbage collector gets to the abandoned generators.
            replies = cast(
                AsyncGenerator[str], chain.astream(inputs, config={"callbacks": [self.record]})
            )
            async with aclosing(replies):
                async for text in replies:
                    if not text:
                        continue
                    if self._first is None:
                        self._first = time.perf_counter()
                    self._chunks += 1
                    self.text += text
                    yield text
            if self.record.finish_reason is None and not self.text:
                raise BackendError(
                    "the model ended its reply with no text and no reason. A server that "
                    "cuts a streaming reply when another request arrives does this "
                    "(llama-cpp-python's server unless started with --interrupt_requests False)"
                )
            self.finish = "length" if self.record.finish_reason == "length" else "stop"
        except (asyncio.CancelledError, GeneratorExit):
            self.finish = "cancelled"
            raise
        except Exception as exc:
            self.finish = "error"
            self.error = str(exc) or type(exc).__name__
            raise
        finally:
            self._ended = time.perf_counter()
            tokens_listener.reset(recording)
            usage_listener.reset(counting)
            queue_listener.reset(token)

    def _note(self, usage: Usage) -> None:
        self._counted = usage

    def token_records(self) -> TokenRecords | None:
        """What the model recorded of each token it drew (None: nothing)."""
        ids: IdSource = "text" if self.backend.token_ids == "text" else "model"
        return TokenRecords.of(
            self.backend.record_top(self.model), bytes(self.tokens), self.pieces, ids
        )

    def _heard_tokens(self, records: bytes, pieces: dict[int, bytes]) -> None:
        self.tokens += records
        self.pieces.update(pieces)

    async def run(self, history: Sequence[BaseMessage], message: str) -> str:
        """The whole reply, without streaming."""
        async with aclosing(self.stream(history, message)) as texts:
            async for _ in texts:
                pass
        return self.text

    def receipt(self) -> Receipt:
        usage = self.record.usage
        estimated = usage is None
        prompt_tokens: int | None
        completion_tokens: int | None
        if usage is None and self._counted is not None:
            # Stopped midway: no last chunk brought the usage, but the model counted as it
            # went (the local engine), so the counts are still exact.
            usage = (self._counted.prompt_tokens, self._counted.completion_tokens)
            estimated = False
        if usage is not None:
            prompt_tokens, completion_tokens = usage
        else:
            # The backend reported none (a stopped reply, a server without stream usage).
            prompt = self.record.prompt
            prompt_tokens = self.backend.count_tokens(prompt) if prompt else None
            completion_tokens = self._count_reply()
        rate = None
        if self._first is not None and self._ended is not None and completion_tokens:
            after_first = self._ended - self._first
            if completion_tokens > 1 and after_first > 0:
                rate = (completion_tokens - 1) / after_first
        started = self._started if self._started is not None else self._created
        queued = started - self._requested if self._requested is not None else 0.0
        return Receipt(
            backend=self.backend.name,
            model=self.model,
            sampling=self.sampling.model_dump(),
            finish_reason=self.finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            tokens_estimated=estimated,
            prompt_messages=len(self.record.prompt),
            prompt_digest=prompt_digest(self.record.prompt) if self.record.prompt else None,
            ttft_ms=_ms(self._first - started) if self._first is not None else None,
            queued_ms=_ms(queued),
            tokens_per_second=round(rate, 2) if rate is not None else None,
            duration_ms=_ms(self._ended - started) if self._ended is not None else None,
            error=self.error,
            not_sent=self.backend.not_sent(self.sampling),
            token_records="recorded" if self.tokens else self.backend.why_no_records(self.model),
        )

    def _count_reply(self) -> int | None:
        if not self.text:
            return 0
        try:
            return max(self.backend.count_text(self.text), 1)
        except ChatLLMError:  # the engine went away meanwhile: the pieces received instead
            log.warning("Could not count the reply's tokens; counting its pieces", exc_info=True)
            return self._chunks or None


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


async def warm_up(backend: Backend, model: str, system_prompt: str) -> float:
    """One reply of one token, nobody's, before the first user: the seconds it took.

    A fresh process's first reply pays for what its first use sets up: on the app's side
    the chain's first run, in the local engine llama.cpp's buffers for a reply, the chat
    template and the sampler. That made the first question of a fresh start wait 2.4× as
    long for its first token as the next questions of the same length (bench/first_reply.py).
    """
    began = time.perf_counter()
    sampling = Sampling(system_prompt=system_prompt, max_tokens=1, temperature=0.0, seed=0)
    await Generation(backend, model, sampling).run([], "Hello.")
    return time.perf_counter() - began
