"""The local engine seen from the app: `LocalEngine`, its line of requests (one generation
at a time, in the order they arrive), token counts, and the registry of the process's
engines, started early or on first use. No LangChain here: the app starts the engine
before it has loaded its chat (chatllm.chat.services)."""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import re
import threading
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from chatllm.config import Settings
from chatllm.engine.process import EngineProcess, EngineSpec
from chatllm.errors import (
    BackendError,
    ConfigError,
    ContextOverflow,
    EngineHung,
    EngineUnavailable,
)
from chatllm.streaming import Delta, Usage, queue_listener, tokens_listener

log = logging.getLogger("chatllm")


class _Ticket:
    """A place in the line for the local model."""

    __slots__ = ("moved",)

    def __init__(self) -> None:
        self.moved = asyncio.Event()


class LocalEngine:
    """The local llama.cpp model, serving one generation at a time from its engine process.

    llama.cpp runs in a supervised child process (`chatllm.engine.process`), so its crash fails one
    reply, not the app. The asyncio line in front of it lets a waiting request say how many
    are ahead of it.
    """

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self.model_path = spec.model_path
        self.n_ctx = spec.n_ctx
        self.process = EngineProcess(spec)
        # Requests are written to the engine from a thread of its own, never from the
        # default pool, which logins (Argon2) and element files share: a write waits while
        # an engine that stopped responding fills its socket, until it is killed as hung.
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-send")
        self._line: list[_Ticket] = []
        self._draining: set[asyncio.Task[None]] = set()  # stopped generations, ending
        # Trimming a long thread counts the same messages on every turn, and several times
        # within one (trim_messages bisects); each text is asked of the engine once.
        self._counts: OrderedDict[str, int] = OrderedDict()

    def start(self) -> None:
        """Start the engine process and wait for its self-check (blocking)."""
        self.process.start()

    def close(self) -> None:
        self.process.close()

    # ---- counting tokens with the model's own tokenizer

    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes. Asks the engine (blocking, briefly) unless counted before."""
        known = self._counts.get(text)
        if known is not None:
            self._counts.move_to_end(text)
            return known
        self._remember([text], self.process.counts([text]))
        return self._counts[text]

    async def prepare_counts(self, texts: Sequence[str]) -> None:
        """Count every text not counted yet in one request, without blocking the loop (and
        waiting for the engine if it is starting), so the chain's trimming finds them all."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._counts))
        if not missing:
            return
        answer: deque[tuple[Any, ...]] = deque()
        arrived = asyncio.Event()
        rid = await self._submit(("count", missing), answer, arrived)
        try:
            await self._next(arrived)
        finally:
            self.process.forget(rid)
        message = answer[0]
        if message[0] == "lost":
            raise message[2]
        self._remember(missing, message[2])

    def _remember(self, texts: Sequence[str], counts: Sequence[int]) -> None:
        for text, count in zip(texts, counts, strict=True):
            self._counts[text] = count
        while len(self._counts) > COUNT_CACHE_SIZE:
            self._counts.popitem(last=False)

    # ---- the line and generating

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Wait in line for the model, telling `queue_listener` the position as it moves."""
        ticket = await self._enter()
        try:
            yield
        finally:
            self._leave(ticket)

    async def _enter(self) -> _Ticket:
        """Join the line and wait to be first in it; the caller must `_leave` it.

        Notices go out with no lock held, so a slow socket delays only its own request.
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
        except BaseException:
            self._leave(ticket)
            raise
        return ticket

    def _leave(self, ticket: _Ticket) -> None:
        """Leave the line, waking the others synchronously: a request cancelled while it
        leaves (a second Stop, a closed tab) cannot strand the ones behind it."""
        self._line.remove(ticket)
        for waiting in self._line:
            waiting.moved.set()

    async def stream(
        self, messages: list[dict[str, str]], params: dict[str, Any]
    ) -> AsyncGenerator[Delta]:
        """Yield (text delta, finish reason, usage) from the model, in turn with other
        callers; the finish reason and usage come with the last delta.

        Closing or cancelling the iteration stops the generation before its next token; the
        line moves on once llama.cpp has stopped. An engine that dies meanwhile raises
        `EngineCrashed`; one silent for longer than the hang timeout is killed and raises
        `EngineHung`. Either way a new engine starts.
        """
        loop = asyncio.get_running_loop()
        ticket = await self._enter()
        # The reading thread appends to `pending` (deque appends are thread-safe) and wakes
        # the loop; each wake takes everything waiting, so a consumer that fell behind
        # catches up in one chunk instead of paying LangChain's per-chunk cost per token.
        pending: deque[tuple[Any, ...]] = deque()
        arrived = asyncio.Event()
        process = self.process
        rid: int | None = None
        finished = False
        heard = tokens_listener.get()
        try:
            rid = await self._submit(("generate", messages, params), pending, arrived)
            while not finished:
                await self._next(arrived)
                text, finish, usage = "", None, None
                while pending:
                    message = pending.popleft()
                    kind = message[0]
                    if kind == "delta":
                        text += message[2]
                        finish = message[3] or finish
                        usage = Usage(*message[4]) if message[4] else usage
                        if message[5] is not None and heard is not None:
                            heard(*message[5])
                    elif kind == "done":
                        finished = True
                        break
                    elif kind == "error":
                        raise _local_error(message[2], message[3], self.n_ctx)
                    elif kind == "lost":
                        finished = True
                        raise message[2]
                if text or finish:
                    yield text, finish, usage
        finally:
            # Nothing here awaits: a generator that nobody closed is closed by the garbage
            # collector, where an await would abandon this block half-way and strand the
            # line. A stopped generation is drained by a task of its own, which holds the
            # place in line until llama.cpp has stopped.
            if rid is None or finished:
                if rid is not None:
                    process.forget(rid)
                self._leave(ticket)
            else:
                try:
                    process.stop(rid)
                finally:
                    self._drain_then_leave(loop, rid, pending, arrived, ticket)

    def _drain_then_leave(
        self,
        loop: asyncio.AbstractEventLoop,
        rid: int,
        pending: deque[tuple[Any, ...]],
        arrived: asyncio.Event,
        ticket: _Ticket,
    ) -> None:
        async def drain() -> None:
            try:
                await self._drain(pending, arrived)
            finally:
                self.process.forget(rid)
                self._leave(ticket)

        def start() -> None:
            task = loop.create_task(drain())
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)

        try:
            loop.call_soon_threadsafe(start)
        except RuntimeError:  # the loop is closed (the app is ending): nobody waits in line
            self.process.forget(rid)
            self._leave(ticket)

    async def _submit(
        self, message: tuple[Any, ...], pending: deque[tuple[Any, ...]], arrived: asyncio.Event
    ) -> int:
        """Send `message` to the engine, once it runs; its answers are appended to
        `pending`, and `arrived` is set for each. The request id."""
        loop = asyncio.get_running_loop()

        def sink(answer: tuple[Any, ...]) -> None:
            pending.append(answer)
            _wake(loop, arrived)

        while True:
            await self._running()
            submitted = loop.run_in_executor(
                self._sender, self.process.submit_if_running, message, sink
            )
            try:
                # Shielded: a request being written completes, and is stopped at once,
                # rather than run for nobody.
                rid = await asyncio.shield(submitted)
            except asyncio.CancelledError:
                submitted.add_done_callback(self._abandon)
                raise
            if rid is not None:
                return rid
            # The engine ended since it was seen running: wait for the next one.

    async def _running(self) -> None:
        """Wait until the engine runs, starting it if need be (`EngineProcess.start_soon`),
        or raise why it cannot. The wait is on the event loop: however many requests wait
        for a restart or a large model's load, they hold no thread, so the default pool's
        other users (logins' Argon2 checks, element files) never wait behind them."""
        loop = asyncio.get_running_loop()
        while not self.process.ready:
            start = self.process.start_soon()
            done = asyncio.Event()
            start.add_done_callback(functools.partial(_wake_on, loop, done))
            await done.wait()
            start.result()  # raises why the engine is unavailable

    def _abandon(self, submitted: asyncio.Future[int | None]) -> None:
        """Stop a request whose caller went away before it had its request id."""
        if not submitted.cancelled() and submitted.exception() is None:
            rid = submitted.result()
            if rid is not None:
                self.process.stop(rid)
                self.process.forget(rid)

    async def _next(self, arrived: asyncio.Event) -> None:
        """Wait for the engine's next message for this request. An engine silent for the
        hang timeout is killed as hung; one busy with another request (a sync caller's)
        is alive, and waited for."""
        timeout = self.spec.hang_timeout
        while not arrived.is_set():
            try:
                await asyncio.wait_for(arrived.wait(), timeout - self.process.silent_for())
            except TimeoutError:
                if self.process.silent_for() >= timeout:
                    self.process.kill_hung()
                    raise EngineHung(timeout) from None
        arrived.clear()

    async def _drain(self, pending: deque[tuple[Any, ...]], arrived: asyncio.Event) -> None:
        """Wait until a stopped generation is over (or its engine is gone)."""
        while True:
            while pending:
                if pending.popleft()[0] in ("done", "lost"):
                    return
            try:
                await self._next(arrived)
            except EngineHung:
                return

    def generate(self, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
        """Blocking, whole-reply generation (for sync callers); the engine runs requests in
        the order they arrive."""
        answers: queue.Queue[tuple[Any, ...]] = queue.Queue()
        rid = self.process.submit(("generate", messages, params), answers.put)
        parts: list[str] = []
        try:
            while True:
                try:
                    message = answers.get(timeout=self.spec.hang_timeout)
                except queue.Empty:
                    self.process.kill_hung()
                    raise EngineHung(self.spec.hang_timeout) from None
                kind = message[0]
                if kind == "delta":
                    parts.append(message[2])
                elif kind == "error":
                    raise _local_error(message[2], message[3], self.n_ctx)
                elif kind == "lost":
                    raise message[2]
                elif kind == "done":
                    return "".join(parts)
        finally:
            self.process.forget(rid)


#: Texts whose token counts are remembered (a long thread's messages, several threads).
COUNT_CACHE_SIZE = 16384


def _wake(loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
    """Set `event` on `loop` from another thread; a loop already closed has nobody to wake."""
    try:
        loop.call_soon_threadsafe(event.set)
    except RuntimeError:
        pass


def _wake_on(loop: asyncio.AbstractEventLoop, event: asyncio.Event, _done: object) -> None:
    """`_wake` as a future's done-callback."""
    _wake(loop, event)


def _local_error(kind: str, text: str, n_ctx: int) -> BackendError:
    """llama-cpp-python's ValueError/RuntimeError (and anything else the engine raised) as
    this app's errors."""
    if kind == "ValueError" and "exceed context window" in text:
        match = re.search(r"\((\d+)\)", text)
        return ContextOverflow(needed=int(match[1]) if match else n_ctx + 1, available=n_ctx)
    return BackendError(f"llama.cpp failed: {text or kind}")


_engines: dict[EngineSpec, LocalEngine] = {}
_engines_lock = threading.Lock()


def engine_spec(settings: Settings) -> EngineSpec:
    return EngineSpec(
        model_path=settings.resolve_model_path(),
        n_ctx=settings.n_ctx,
        n_threads=settings.n_threads,
        start_timeout=settings.engine_start_timeout,
        hang_timeout=settings.engine_hang_timeout,
    )


def local_engine(settings: Settings) -> LocalEngine:
    """The process's local model, shared by every chat; its engine process is started on
    first use (or by `start_local_engine`)."""
    spec = engine_spec(settings)
    with _engines_lock:
        if spec not in _engines:
            _engines[spec] = LocalEngine(spec)
        return _engines[spec]


def close_local_engine(settings: Settings) -> None:
    """End the local engine process of these settings; a later request starts a new one."""
    with _engines_lock:
        engine = _engines.pop(engine_spec(settings), None)
    if engine is not None:
        engine.close()


def start_local_engine_soon(settings: Settings) -> threading.Thread:
    """Start the local engine in a thread of its own, so that the app serves its first page
    while the model loads (bench/startup.py); a reply asked for meanwhile waits for this
    start (`EngineProcess.start`). Why it failed, if it does, is logged here and told
    where the local profile is offered."""

    def start() -> None:
        try:
            failure = start_local_engine(settings)
        except ConfigError as exc:  # a GGUF file llama.cpp cannot load
            failure = EngineUnavailable(str(exc), cause="load")
        if failure is not None:
            log.error("%s", failure)

    thread = threading.Thread(target=start, name="engine-start", daemon=True)
    thread.start()
    return thread


def start_local_engine(settings: Settings) -> EngineUnavailable | None:
    """Start the local engine and wait for its self-check: None when it is ready, else why
    it is unavailable (the app goes on with its other backends). A file that is no model
    raises `ConfigError`."""
    try:
        local_engine(settings).start()
    except EngineUnavailable as exc:
        return exc
    return None
