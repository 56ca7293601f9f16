"""A fresh start's first reply beside the later ones: is the first question as quick?

Each round starts the local model's engine afresh, as the app's start does (the engine
process, its self-check, then whatever the app does before the first user arrives:
`chatllm.generation.warm_up`, unless `--cold`), then asks it N questions of about the same length
(`--words`), each a new conversation with the default system prompt, as a room's first
questions are. Time to first token is measured as a chat turn makes it
(`chatllm.generation.Generation`: the chain, the engine's pipe). The table gives the first
question's median over the rounds beside the later ones', and their ratio against the
target (first ≤ 1.5× later).

    .venv/bin/python bench/first_reply.py [--rounds 5] [--questions 4] [--words 150] [--cold]
        [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from contextlib import aclosing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chatllm.backends.local import LocalBackend  # noqa: E402
from chatllm.config import Settings  # noqa: E402
from chatllm.engine.client import close_local_engine  # noqa: E402
from chatllm.generation import Generation, warm_up  # noqa: E402
from chatllm.sampling import Sampling  # noqa: E402

TARGET_RATIO = 1.5
TOPICS = ["lighthouses", "tides", "harbours", "storms", "ships", "maps", "gulls", "nets"]


def question(n: int, words: int) -> str:
    """A question of about `words` words, its own for each `n`."""
    topic = TOPICS[n % len(TOPICS)]
    body = " ".join(f"{topic}{k % 7} and the sea {n}" for k in range(words // 5))
    return f"Question {n}: tell me about {topic}. Notes: {body}"


async def first_token_ms(backend: LocalBackend, model: str, sampling: Sampling, text: str) -> float:
    generation = Generation(backend, model, sampling)
    began = time.perf_counter()
    async with aclosing(generation.stream([], text)) as tokens:
        async for _ in tokens:
            return (time.perf_counter() - began) * 1000
    raise RuntimeError("the model wrote nothing")


async def one_round(settings: Settings, args: argparse.Namespace, round_: int) -> list[float]:
    close_local_engine(settings)  # the next reply starts a new engine, as a new app would
    backend = LocalBackend(settings)
    await asyncio.to_thread(backend.engine.start)
    if not args.cold:
        await warm_up(backend, settings.local_model_name, settings.system_prompt)
    model = settings.local_model_name
    sampling = Sampling(system_prompt=settings.system_prompt, max_tokens=8, seed=7)
    times = []
    for n in range(args.questions):
        text = question(round_ * 10 + n, args.words)
        times.append(await first_token_ms(backend, model, sampling, text))
    return times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--questions", type=int, default=4, help="per fresh engine (4)")
    parser.add_argument("--words", type=int, default=150, help="about this long (150)")
    parser.add_argument("--cold", action="store_true", help="no warm-up after the start")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    firsts: list[float] = []
    laters: list[float] = []
    try:
        for round_ in range(args.rounds):
            times = await one_round(settings, args, round_)
            firsts.append(times[0])
            laters += times[1:]
    finally:
        close_local_engine(settings)
    first, later = statistics.median(firsts), statistics.median(laters)
    ratio = first / later
    verdict = "PASS" if ratio <= TARGET_RATIO else "MISS"
    mode = "cold (no warm-up)" if args.cold else "warmed at start"
    print(f"{args.rounds} fresh engines, {mode}; {args.questions} questions of ~{args.words} words")
    each = ", ".join(f"{t:.0f}" for t in firsts)
    print(f"first question's TTFT  {first:7.1f} ms  (per round: {each})")
    print(f"later questions' TTFT  {later:7.1f} ms")
    print(f"first / later          {ratio:7.2f}   target <= {TARGET_RATIO}   {verdict}")
    if args.json:
        figures: dict[str, Any] = {
            "cold": args.cold,
            "first_ttft_ms": round(first, 1),
            "later_ttft_ms": round(later, 1),
            "ratio": round(ratio, 2),
            "pass": ratio <= TARGET_RATIO,
        }
        args.json.write_text(json.dumps(figures, indent=2), "utf-8")


if __name__ == "__main__":
    asyncio.run(main())
