"""Streaming speed of the app's reply path beside raw llama-cpp-python, on one model.

In one process, with one loaded `llama_cpp.Llama`, one prompt and one set of sampling values
(temperature 0, fixed seed), it times:

  A  raw: `Llama.create_chat_completion(stream=True)` iterated on the event loop's thread;
  B  app: a reply as `ChatApp.answer` makes it (`chatllm.generation.Generation`: the chain,
     token counting and timing for the receipt) streamed into a `chainlit.Message` through
     a websocket session whose emit serialises every event with `json.dumps`, as the socket
     transport would; a token counts when it is emitted;
  C  langchain-community's `ChatLlamaCpp.astream`, for context, when that package is installed.

By default every round is a new conversation (its system prompt starts with the round's
number), as each chat turn brings new tokens; `--repeat-prompt` sends the same prompt every
round instead, which lets raw llama-cpp-python reuse its whole cached prompt while the app
reuses whole 32-token chunks only (the price of exact seed replays, see
`LocalEngine._reuse_exactly`).

TTFT is the time from the start of a call to its first non-empty content token; tokens/s is
(content tokens - 1) / (last token time - first token time). After one warm-up round the paths
alternate (A, B, C, A, B, C, ...) and the table shows medians, B's tokens/s as a percentage of
A's and B's added TTFT, against the targets (>= 97 % and <= 20 ms).

Run with the project's venv from the repository root (Chainlit's app root is set to the
repository, so its .chainlit config is used whatever the working directory):

    .venv/bin/python bench/stream.py [--rounds 7] [--max-tokens 200] [--json PATH]
"""

# ruff: noqa: E402  (Chainlit's app root must be set before chainlit is imported)

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("CHAINLIT_APP_ROOT", str(ROOT))  # else Chainlit writes a config in cwd

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import chainlit as cl
from chainlit.context import init_ws_context
from chainlit.session import WebsocketSession
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage

from chatllm.config import Settings
from chatllm.generation import Generation
from chatllm.models import LocalBackend, LocalEngine, local_engine
from chatllm.sampling import Sampling

PROMPT = "Write a long story about a lighthouse keeper."
SYSTEM = "You are a helpful assistant."
SEED = 1234
TARGET_RATE_PCT = 97.0
TARGET_ADDED_TTFT_MS = 20.0
TOKEN_EVENTS = frozenset({"stream_start", "stream_token"})


@dataclass(frozen=True)
class Run:
    tokens: int
    ttft_ms: float
    rate: float  # tokens/s between the first token and the last
    text: str


def measure(
    start: float, stamps: list[float], text: str, tokens: int | None = None, first: int = 1
) -> Run:
    """Time a reply. `tokens` defaults to one per stamp; the app's path may send tokens that
    piled up as one chunk, so its count comes from the (identical) raw reply instead, and
    `first` says how many tokens its first chunk held (those arrived before the clock)."""
    tokens = len(stamps) if tokens is None else tokens
    if len(stamps) < 2:
        raise RuntimeError(f"only {len(stamps)} content chunk(s) came back; cannot time a rate")
    rate = (tokens - first) / (stamps[-1] - stamps[0])
    return Run(tokens=tokens, ttft_ms=(stamps[0] - start) * 1000, rate=rate, text=text)


def raw_run(engine: LocalEngine, sampling: Sampling, system: str) -> Run:
    """A: llama-cpp-python's own stream, nothing in between."""
    messages: Any = [{"role": "system", "content": system}, {"role": "user", "content": PROMPT}]
    stamps: list[float] = []
    parts: list[str] = []
    start = time.perf_counter()
    stream = engine.llama.create_chat_completion(
        messages=messages,
        stream=True,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        repeat_penalty=sampling.repeat_penalty,
        max_tokens=sampling.max_tokens,
        seed=sampling.seed,
    )
    for chunk in stream:
        if content := chunk["choices"][0]["delta"].get("content"):  # type: ignore[index, union-attr]
            stamps.append(time.perf_counter())
            parts.append(str(content))
    return measure(start, stamps, "".join(parts))


class Socket:
    """Stands in for the socket transport: serialises each event and notes when tokens leave."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    async def emit(self, event: str, data: Any) -> None:
        json.dumps(data)
        if event in TOKEN_EVENTS:
            self.stamps.append(time.perf_counter())

    async def emit_call(self, event: str, data: Any, wait: int | None) -> Any:
        raise RuntimeError(f"the benchmark cannot answer {event!r}")


def app_runner(
    settings: Settings, sampling: Sampling, reference: list[Run]
) -> Callable[[str], Awaitable[Run]]:
    """B: one chat turn as `ChatApp.answer` streams it, in a Chainlit websocket context.

    Its token count is the raw reply's (`reference[-1]`), after checking the texts match."""
    backend = LocalBackend(settings)
    engine = backend.engine
    model = settings.local_model_name
    socket = Socket()
    session = WebsocketSession(
        id=str(uuid.uuid4()),
        socket_id=str(uuid.uuid4()),
        emit=socket.emit,  # type: ignore[arg-type]
        emit_call=socket.emit_call,
        user_env={},
        client_type="webapp",
        environ=None,
        thread_id=str(uuid.uuid4()),
    )

    async def turn(system: str) -> Run:
        init_ws_context(session)
        socket.stamps.clear()
        chunks = 0
        start = time.perf_counter()
        reply = cl.Message(content="")
        generation = Generation(backend, model, sampling.update({"system_prompt": system}))
        first_chunk = ""
        async for text in generation.stream([], PROMPT):
            chunks += bool(text)
            first_chunk = first_chunk or text
            await reply.stream_token(text)
        record = generation.record
        if len(socket.stamps) != chunks:
            raise RuntimeError(f"{chunks} chain chunks but {len(socket.stamps)} token events")
        raw = reference[-1]
        if reply.content != raw.text:
            raise RuntimeError("the app's reply differs from the raw reply; not comparable")
        if record.finish_reason != "length":
            raise RuntimeError(f"expected a reply cut at max_tokens, got {record.finish_reason}")
        first = max(1, engine.count_tokens(first_chunk))
        return measure(start, socket.stamps, reply.content, tokens=raw.tokens, first=first)

    # A task of its own, as Chainlit runs a turn.
    return lambda system: asyncio.create_task(turn(system))


def community_runner(
    engine: LocalEngine, sampling: Sampling
) -> Callable[[str], Awaitable[Run]] | None:
    """C: langchain-community's ChatLlamaCpp over the same Llama; None if not installed."""
    try:
        from langchain_community.chat_models import ChatLlamaCpp
    except ImportError:
        return None
    model: BaseChatModel = ChatLlamaCpp(
        model_path=str(engine.model_path),
        n_ctx=engine.n_ctx,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        repeat_penalty=sampling.repeat_penalty,
        max_tokens=sampling.max_tokens,
        seed=SEED,
        verbose=False,
    )
    model.client = engine.llama  # type: ignore[attr-defined]  # share A's and B's model

    async def turn(system: str) -> Run:
        messages = [SystemMessage(content=system), HumanMessage(content=PROMPT)]
        stamps: list[float] = []
        parts: list[str] = []
        start = time.perf_counter()
        async for chunk in model.astream(messages):
            if chunk.content:
                stamps.append(time.perf_counter())
                parts.append(chunk.text)
        return measure(start, stamps, "".join(parts))

    return turn


def median(runs: list[Run], field: str) -> float:
    return float(statistics.median(getattr(run, field) for run in runs))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def system_prompt(round_: int, repeat_prompt: bool) -> str:
    """The round's system prompt. A chat sends a new conversation's tokens on every turn,
    so by default each round starts with its own words and no path can reuse the model's
    cache of another's prompt; with `repeat_prompt` every round sends the same prompt."""
    return SYSTEM if repeat_prompt else f"Conversation {round_}. {SYSTEM}"


async def main(rounds: int, max_tokens: int, repeat_prompt: bool = False) -> dict[str, Any]:
    """Run the rounds, print the table and return the figures."""
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    sampling = Sampling(temperature=0.0, seed=SEED, max_tokens=max_tokens, system_prompt=SYSTEM)
    engine = local_engine(settings)

    raw_runs: list[Run] = []

    async def raw_turn(system: str) -> Run:  # blocks the loop's thread; nothing else runs
        raw_runs.append(raw_run(engine, sampling, system))
        return raw_runs[-1]

    paths: dict[str, Callable[[str], Awaitable[Run]]] = {
        "A raw llama-cpp-python": raw_turn,
        "B app chain + Chainlit": app_runner(settings, sampling, raw_runs),
    }
    community = community_runner(engine, sampling)
    if community is not None:
        paths["C ChatLlamaCpp.astream"] = community

    runs: dict[str, list[Run]] = {name: [] for name in paths}
    for round_ in range(rounds + 1):  # round 0 warms up and is not kept
        for name, run in paths.items():
            if not repeat_prompt:  # C shares the model: it must not reuse B's prompt
                engine.llama.reset()  # type: ignore[no-untyped-call]
            result = await run(system_prompt(round_, repeat_prompt))
            if round_:
                runs[name].append(result)

    threads = f"n_threads={engine.llama.n_threads}  cpus={os.cpu_count()}"
    print(f"model    {settings.local_model_name}  ({engine.model_path.name})")
    print(f"         n_ctx={settings.n_ctx}  {threads}")
    print(f"prompt   {PROMPT!r}")
    print(
        "         the same prompt every round (cache reuse)"
        if repeat_prompt
        else "         a new conversation every round (no path reuses another's cache)"
    )
    print(
        f"sampling temperature=0 seed={SEED} max_tokens={max_tokens} top_p={sampling.top_p} "
        f"top_k={sampling.top_k} repeat_penalty={sampling.repeat_penalty}"
    )
    print(f"rounds   {rounds} after 1 warm-up, alternating; medians\n")
    print(f"{'path':<24} {'tokens':>7} {'TTFT ms':>8} {'tokens/s':>9}   tokens/s min-max")
    for name, kept in runs.items():
        counts = "/".join(str(n) for n in sorted({r.tokens for r in kept}))
        spread = f"{min(r.rate for r in kept):.1f}-{max(r.rate for r in kept):.1f}"
        ttft, rate = median(kept, "ttft_ms"), median(kept, "rate")
        print(f"{name:<24} {counts:>7} {ttft:>8.1f} {rate:>9.1f}   {spread}")
    if community is None:
        print(f"{'C ChatLlamaCpp.astream':<24} skipped: langchain-community is not installed")

    raw, app = runs["A raw llama-cpp-python"], runs["B app chain + Chainlit"]
    rate_pct = 100 * median(app, "rate") / median(raw, "rate")
    added_ms = median(app, "ttft_ms") - median(raw, "ttft_ms")
    paired = sorted(100 * b.rate / a.rate for a, b in zip(raw, app, strict=True))
    print(
        f"\nB tokens/s = {rate_pct:.1f} % of A   target >= {TARGET_RATE_PCT:.0f} %   "
        f"{verdict(rate_pct >= TARGET_RATE_PCT)}"
        f"   (per round: {paired[0]:.1f}-{paired[-1]:.1f} %)"
    )
    print(
        f"B TTFT - A TTFT = {added_ms:+.1f} ms   target <= {TARGET_ADDED_TTFT_MS:.0f} ms   "
        f"{verdict(added_ms <= TARGET_ADDED_TTFT_MS)}"
    )
    if len({r.tokens for kept in runs.values() for r in kept}) != 1:
        print("WARNING: the paths produced different token counts; the comparison is unfair")

    return {
        "model": settings.local_model_name,
        "prompt": PROMPT,
        "repeat_prompt": repeat_prompt,
        "max_tokens": max_tokens,
        "seed": SEED,
        "rounds": rounds,
        "runs": {
            name: [{k: v for k, v in asdict(r).items() if k != "text"} for r in kept]
            for name, kept in runs.items()
        },
        "medians": {
            name: {"ttft_ms": median(kept, "ttft_ms"), "rate": median(kept, "rate")}
            for name, kept in runs.items()
        },
        "app_rate_pct_of_raw": rate_pct,
        "app_added_ttft_ms": added_ms,
        "pass": {
            "rate": rate_pct >= TARGET_RATE_PCT,
            "ttft": added_ms <= TARGET_ADDED_TTFT_MS,
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="measured rounds (default 7)")
    parser.add_argument("--max-tokens", type=int, default=200, help="reply length (default 200)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--repeat-prompt",
        action="store_true",
        help="send the same prompt every round (llama.cpp may reuse its cache of it)",
    )
    args = parser.parse_args()
    figures = asyncio.run(main(args.rounds, args.max_tokens, args.repeat_prompt))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
        print(f"\nfigures written to {args.json}")
