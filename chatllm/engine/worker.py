"""The local model's engine: llama.cpp in a process of its own, serving the app over a pipe.

The app (`chatllm.engine.process.EngineProcess`) starts this module as a child process, so a native
crash, an out-of-memory kill or a hang in llama.cpp ends this process only; the app fails
the reply in progress and starts a new one. Nothing here imports Chainlit or LangChain.

    python -m chatllm.engine.worker --fd FD --parent PID --model PATH --n-ctx N
        [--n-threads N]

Messages are pickled tuples over `multiprocessing.connection` on the inherited socket `FD`
(both ends are this app's own code). The app sends:

    ("generate", rid, messages, params)  a chat completion; replies stream back (params:
                                         llama-cpp-python's, and RECORD_TOP: candidates
                                         to record per token, 0 or absent for none)
    ("stop", rid)                        stop that generation before its next token
    ("count", rid, texts)                tokens each text takes (answered at once, also
                                         while a generation runs)
    ("shutdown",)

and this process answers:

    ("ready", info) | ("failed", stage, text)         once, after loading and the self-check
    ("delta", rid, text, finish, usage, records)      usage = (prompt, completion) so far;
                                                      records: (bytes, pieces) or None
                                                      (chatllm.engine.tokens.Records)
    ("alive", rid)                                    evaluating a long prompt, about each second
    ("error", rid, kind, text)                        kind: the exception's class name
    ("done", rid, generated)                          after every generate, stopped or not;
                                                      tokens sampled since this process began
    ("counts", rid, [n, ...])
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Any

#: Prompts are evaluated in chunks of this many tokens, and the KV cache is reused in whole
#: chunks only (see Engine._reuse_exactly). Prompt speed is the same from 32 to 512.
PROMPT_CHUNK = 32

#: The start-up self-check evaluates a prompt this long, past llama.cpp's batched matrix
#: path (where the AMX kernels of a native build fault), before the engine is offered.
SELF_CHECK_TOKENS = 160

#: Seconds between "alive" messages while a long prompt is being evaluated.
ALIVE_EVERY = 1.0

#: The key in a request's params asking for each token's record with this many candidates
#: (the sampling X-ray: chatllm.engine.tokens); llama-cpp-python never sees it.
RECORD_TOP = "record_top"

Usage = tuple[int, int]
#: A piece of a reply: its text, why it ended (on the last), the counts so far, and the
#: records of the tokens sampled since the piece before (chatllm.engine.tokens.Records;
#: None when the request asked for none).
Delta = tuple[str, str | None, Usage | None, tuple[bytes, dict[int, bytes]] | None]

_SELF_CHECK_TEXT = (
    "The keeper of the lighthouse climbs one hundred and twelve steps every evening, winds "
    "the clockwork, trims the wick and writes the weather in a book: wind from the west, "
    "rain before midnight, three ships passing north. "
)


class _Meter:
    """Counts the tokens of one generation, and stops it on request.

    llama-cpp-python streams no token usage. Every completion runs `Llama.generate`, which
    takes the prompt's tokens and yields each sampled token; `Engine` wraps it with
    `count`, so the counts are exact and a stop takes effect before the next token is even
    detokenized.
    """

    __slots__ = ("completion_tokens", "prompt_tokens", "stop")

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def count(
        self,
        generate: Callable[..., Iterator[int]],
        is_end: Callable[[int], bool],
        before: Callable[[Sequence[int]], None],
        take: Callable[[int], None] | None = None,
    ) -> Callable[..., Iterator[int]]:
        def metered(tokens: Sequence[int], *args: Any, **kwargs: Any) -> Iterator[int]:
            self.prompt_tokens = len(tokens)
            before(tokens)
            for token in generate(tokens, *args, **kwargs):
                if self.stop.is_set():
                    return
                if take is not None:  # the logits it was drawn from are still llama.cpp's
                    take(token)
                if not is_end(token):  # the end-of-generation token is not part of the reply
                    self.completion_tokens += 1
                yield token

        return metered

    def usage(self) -> Usage:
        return (self.prompt_tokens, self.completion_tokens)


class Engine:
    """One loaded llama.cpp model, one generation at a time."""

    def __init__(self, model_path: str, n_ctx: int, n_threads: int | None) -> None:
        from llama_cpp import Llama

        self.llama = Llama(
            model_path=model_path,
            n_ctx=n_ctx,
            n_threads=n_threads,
            # A prompt is evaluated on as many threads as a token is generated on: the
            # library's default is every CPU, whatever the affinity or a cgroup quota allow,
            # and more threads than the cores the process may use make it slower.
            n_threads_batch=n_threads,
            n_batch=PROMPT_CHUNK,
            verbose=False,
        )
        self._generate_tokens = self.llama.generate  # bound before any wrapping
        #: Tokens sampled since this process started, over every generation.
        self.generated = 0
        # The start of the KV cache known to hold exactly what evaluating it afresh gives.
        self._exact: Any = None

    def self_check(self) -> dict[str, Any]:
        """Evaluate a prompt of SELF_CHECK_TOKENS tokens in the chunks a chat prompt takes,
        then one token alone, as a reply's first token is: a build whose kernels cannot run
        on this CPU fails here (or this process dies here) instead of in a user's reply."""
        import llama_cpp

        llama = self.llama
        tokens = llama.tokenize(_SELF_CHECK_TEXT.encode("utf-8"), add_bos=True)
        while len(tokens) < SELF_CHECK_TOKENS:
            tokens += llama.tokenize(_SELF_CHECK_TEXT.encode("utf-8"), add_bos=False)
        tokens = tokens[:SELF_CHECK_TOKENS]
        began = time.perf_counter()
        llama.reset()  # type: ignore[no-untyped-call]
        llama.eval(tokens)
        llama.eval([tokens[1]])
        elapsed = time.perf_counter() - began
        llama.reset()  # type: ignore[no-untyped-call]
        system = llama_cpp.llama_print_system_info()
        return {
            "self_check_tokens": len(tokens),
            "self_check_ms": round(elapsed * 1000, 1),
            "system_info": system.decode("utf-8", "replace") if system else "",
            "n_threads": llama.n_threads,
            "n_threads_batch": llama.n_threads_batch,
            "pid": os.getpid(),
        }

    def count(self, texts: Sequence[str]) -> list[int]:
        tokenize = self.llama.tokenize
        return [len(tokenize(text.encode("utf-8"), add_bos=False, special=False)) for text in texts]

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

    def generate(
        self,
        messages: list[dict[str, str]],
        params: dict[str, Any],
        stop: threading.Event,
        alive: Callable[[], None],
    ) -> Iterator[Delta]:
        """Yield (text delta, finish reason, usage); the last delta carries the finish reason
        and the usage. `alive` is called after every llama.cpp decode call."""
        import llama_cpp

        meter = _Meter(stop)
        vocab = self.llama._model.vocab
        context = self.llama._ctx
        decode = context.decode
        params = dict(params)
        top = int(params.pop(RECORD_TOP, 0) or 0)
        recorder = None
        if top > 0:
            from chatllm.engine.tokens import TokenRecorder

            recorder = TokenRecorder(context.ctx, vocab, self.llama.n_vocab(), top)

        def is_end(token: int) -> bool:
            return bool(llama_cpp.llama_vocab_is_eog(vocab, token))

        def decode_and_report(batch: Any) -> None:
            decode(batch)
            alive()

        # Instance attributes shadowing the methods for this call; only this thread calls them.
        self.llama.generate = meter.count(  # type: ignore[method-assign,assignment]
            self._generate_tokens,
            is_end,
            self._reuse_exactly,
            recorder.take if recorder is not None else None,
        )
        context.decode = decode_and_report  # type: ignore[method-assign]
        stream = self.llama.create_chat_completion(
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            **params,
        )
        try:
            for chunk in stream:
                if stop.is_set():
                    return
                choice: dict[str, Any] = chunk["choices"][0]  # type: ignore[index,assignment]
                delta: str = choice["delta"].get("content") or ""
                finish: str | None = choice.get("finish_reason")
                if delta or finish:
                    # The counts so far with every delta: a reply stopped midway has them
                    # exact too (each a tuple of two ints: nothing to a token's cost); and
                    # the tokens' records since the last delta, as bytes.
                    records = recorder.flush() if recorder is not None else None
                    yield delta, finish, meter.usage(), records
        finally:
            stream.close()  # type: ignore[union-attr]
            self.generated += meter.completion_tokens
            del self.llama.generate  # the methods again
            del context.decode


class Server:
    """Reads requests on the connection; generations run in turn on one thread, token
    counts are answered by the reading thread at once."""

    def __init__(self, engine: Engine, connection: Connection) -> None:
        self.engine = engine
        self.connection = connection
        self._send_lock = threading.Lock()
        self._jobs: queue.Queue[tuple[int, list[dict[str, str]], dict[str, Any]] | None] = (
            queue.Queue()
        )
        self._stops: dict[int, threading.Event] = {}
        self._stops_lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self.connection.send(message)

    def serve(self) -> None:
        """Generate on this (the main) thread until the app goes away; requests are read by
        another. The main thread matters: llama.cpp's OpenMP threads serve a generation
        started from a secondary thread ~40 ms slower to its first token (measured here)."""
        threading.Thread(target=self._read, name="requests", daemon=True).start()
        self._work()

    def _read(self) -> None:
        try:
            while True:
                try:
                    message = self.connection.recv()
                except (EOFError, OSError):  # the app closed its end or went away
                    return
                kind = message[0]
                if kind == "generate":
                    _, rid, messages, params = message
                    with self._stops_lock:
                        self._stops[rid] = threading.Event()
                    self._jobs.put((rid, messages, params))
                elif kind == "stop":
                    with self._stops_lock:
                        event = self._stops.get(message[1])
                    if event is not None:
                        event.set()
                elif kind == "count":
                    _, rid, texts = message
                    self.send(("counts", rid, self.engine.count(texts)))
                elif kind == "shutdown":
                    return
        finally:
            self._jobs.put(None)  # the generating thread ends after its current request

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            rid, messages, params = job
            with self._stops_lock:
                stop = self._stops[rid]
            try:
                if not stop.is_set():
                    self._generate(rid, messages, params, stop)
            finally:
                with self._stops_lock:
                    del self._stops[rid]
                self.send(("done", rid, self.engine.generated))

    def _generate(
        self,
        rid: int,
        messages: list[dict[str, str]],
        params: dict[str, Any],
        stop: threading.Event,
    ) -> None:
        last = time.monotonic()

        def alive() -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= ALIVE_EVERY:
                last = now
                self.send(("alive", rid))

        try:
            for text, finish, usage, records in self.engine.generate(messages, params, stop, alive):
                self.send(("delta", rid, text, finish, usage, records))
                last = time.monotonic()
        except (ValueError, RuntimeError) as exc:  # llama-cpp-python's own refusals
            self.send(("error", rid, type(exc).__name__, str(exc)))
        except Exception as exc:  # a bug: its traceback goes to the app's log (stderr)
            traceback.print_exc()
            self.send(("error", rid, type(exc).__name__, str(exc)))


def _die_with_parent(parent: int) -> None:
    """End this process soon after the app ends, even if the app was killed and this process
    is busy in llama.cpp (a closed pipe alone would wait for the next read).

    Polled rather than PR_SET_PDEATHSIG: that signal follows the parent *thread*, and the
    app starts a new engine from a thread that ends right after.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chatllm.engine.worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--n-ctx", type=int, required=True)
    parser.add_argument("--n-threads", type=int, default=None)
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is the app's to handle
    connection = Connection(args.fd)
    try:
        engine = Engine(args.model, args.n_ctx, args.n_threads)
    except (ValueError, RuntimeError, OSError) as exc:
        connection.send(("failed", "load", str(exc) or type(exc).__name__))
        return 3
    try:
        info = engine.self_check()
    except (ValueError, RuntimeError) as exc:
        connection.send(("failed", "self_check", str(exc) or type(exc).__name__))
        return 3
    server = Server(engine, connection)
    server.send(("ready", info))
    server.serve()
    # Leave at once: llama.cpp's threads and destructors have nothing left to do.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
