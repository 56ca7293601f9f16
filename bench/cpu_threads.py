"""llama.cpp's speed on this machine for each CPU thread count: what the default should be.

One model (the app's, as `Settings` resolves it: the embedded one by default), loaded once
in this process; for each thread count from 1 to the CPUs this process may use, a round
generates the same reply (temperature 0, a fixed seed, `--max-tokens`) to a new prompt,
so every round evaluates its whole prompt. The thread count is set for generation and
prompt evaluation alike (`llama_set_n_threads`). Counts alternate round by round (1, 2,
…, N, 1, 2, …) after a warm-up round, and the table shows each count's medians:
generation tokens/s, time to first token (the prompt's evaluation), and both beside
1 thread's, with the count the app picks by default (`chatllm.engine.cpus.default_threads`)
marked.

    .venv/bin/python bench/cpu_threads.py [--rounds 5] [--max-tokens 128] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import llama_cpp  # noqa: E402

from chatllm.config import Settings  # noqa: E402
from chatllm.engine.cpus import default_threads  # noqa: E402
from chatllm.engine.worker import PROMPT_CHUNK  # noqa: E402

PROMPT = "Write a long story about a lighthouse keeper and the ships she watches."
SEED = 1234


def one_reply(llama: llama_cpp.Llama, round_: int, max_tokens: int) -> tuple[float, float]:
    """(time to first token s, generation tokens/s) of one reply to a new prompt."""
    llama.reset()  # type: ignore[no-untyped-call]
    messages: Any = [
        {"role": "system", "content": f"Round {round_}. You are a helpful assistant."},
        {"role": "user", "content": PROMPT},
    ]
    began = time.perf_counter()
    first: float | None = None
    times: list[float] = []
    for chunk in llama.create_chat_completion(
        messages, temperature=0.0, seed=SEED, max_tokens=max_tokens, stream=True
    ):
        delta: Any = chunk["choices"][0]["delta"]  # type: ignore[index]
        if delta.get("content"):
            now = time.perf_counter()
            first = first or now
            times.append(now)
    assert first is not None and len(times) > 1
    return first - began, (len(times) - 1) / (times[-1] - times[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    usable = len(os.sched_getaffinity(0))
    counts = list(range(1, usable + 1))
    chosen = default_threads()
    llama = llama_cpp.Llama(
        model_path=str(settings.resolve_model_path()),
        n_ctx=settings.n_ctx,
        n_batch=PROMPT_CHUNK,
        verbose=False,
    )
    figures: dict[int, dict[str, list[float]]] = {n: {"ttft": [], "rate": []} for n in counts}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for n in counts:
            llama_cpp.llama_set_n_threads(llama.ctx, n, n)
            ttft, rate = one_reply(llama, round_ * 100 + n, args.max_tokens)
            if round_:
                figures[n]["ttft"].append(ttft)
                figures[n]["rate"].append(rate)

    rows = []
    for n in counts:
        rows.append(
            {
                "threads": n,
                "tokens_per_s": round(statistics.median(figures[n]["rate"]), 1),
                "ttft_ms": round(1000 * statistics.median(figures[n]["ttft"]), 1),
            }
        )
    base = rows[0]
    print(f"model {settings.resolve_model_path().name}; {usable} usable CPUs; {args.rounds} rounds")
    print(f"{'threads':>7} {'tokens/s':>9} {'× 1 thread':>10} {'TTFT ms':>8} {'× 1 thread':>10}")
    for row in rows:
        mark = "  <- default" if row["threads"] == chosen else ""
        print(
            f"{row['threads']:>7} {row['tokens_per_s']:>9} "
            f"{row['tokens_per_s'] / base['tokens_per_s']:>10.2f} {row['ttft_ms']:>8}"
            f" {row['ttft_ms'] / base['ttft_ms']:>10.2f}{mark}"
        )
    fastest = max(rows, key=lambda r: r["tokens_per_s"])
    print(f"fastest: {fastest['threads']} threads; the default: {chosen}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "default": chosen}, indent=2), "utf-8")


if __name__ == "__main__":
    main()
