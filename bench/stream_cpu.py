"""CPU per streamed reply from an OpenAI-compatible endpoint: the app's path beside the
libraries it is built on, side by side in one process.

Under load the app is CPU-bound (bench/load.py): every streamed token costs the web
process CPU, and one core runs out before the endpoint does. This measures that cost for one
reply, on the CPU clock of this process (`time.process_time`), with the endpoint (load.py's
scripted one, `--tokens` tokens `--interval-ms` apart) in a process of its own:

  app        a reply as `ChatApp.answer` makes it (`chatllm.generation.Generation`: the chain
             with `EndpointChat`, the receipt), without Chainlit;
  app model  `EndpointChat.astream` alone (the app's chat model: langchain-openai's, its
             stream read by the app);
  ChatOpenAI langchain-openai's `ChatOpenAI.astream`, same settings: the reference;
  openai     the openai client's own stream (`chat.completions.create(stream=True)`);
  httpx      the bytes alone: an httpx stream, each `data:` line through `json.loads`.

After a warm-up the paths alternate round by round; the table shows each one's median CPU
per reply and per token, and the app model's as a % of ChatOpenAI's.

    .venv/bin/python bench/stream_cpu.py [--rounds 60] [--tokens 40] [--interval-ms 2]
        [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import openai  # noqa: E402
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage  # noqa: E402
from langchain_openai import ChatOpenAI  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from chatllm.backends.openai import OpenAIBackend  # noqa: E402
from chatllm.config import Settings  # noqa: E402
from chatllm.generation import Generation  # noqa: E402
from chatllm.sampling import Sampling  # noqa: E402
from deploy.cluster import stop_process, wait_until_serving  # noqa: E402
from deploy.postgres import free_port  # noqa: E402

MODEL = "scripted"


def history() -> list[BaseMessage]:
    """Three earlier exchanges, as a chat a few turns in sends."""
    turns: list[BaseMessage] = []
    for n in range(3):
        turns += [HumanMessage(f"question {n} " * 20), AIMessage(f"answer {n} " * 60)]
    return turns


async def measure(args: argparse.Namespace, base_url: str) -> dict[str, Any]:
    backend = OpenAIBackend(
        Settings(openai_base_url=base_url, local_backend=False, openai_models=[MODEL])
    )
    earlier = history()
    prompt = [*earlier, HumanMessage("hello there")]
    wire = [
        {"role": "user" if isinstance(m, HumanMessage) else "assistant", "content": m.text}
        for m in prompt
    ]
    client = openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0)
    raw = httpx.AsyncClient(timeout=30)
    sampling = Sampling(seed=1)
    reference = ChatOpenAI(
        base_url=base_url,
        api_key=SecretStr("none"),
        model=MODEL,
        streaming=True,
        stream_usage=True,
    )

    async def app() -> int:
        generation = Generation(backend, MODEL, sampling)
        pieces = [t async for t in generation.stream(earlier, "hello there")]
        generation.receipt()
        return len(pieces)

    async def app_model() -> int:
        model = backend.chat_model(MODEL, sampling)
        return len([c async for c in model.astream(prompt) if c.content])

    async def chat_openai() -> int:
        return len([c async for c in reference.astream(prompt) if c.content])

    async def openai_client() -> int:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=wire,  # type: ignore[arg-type]
            stream=True,
        )
        assert isinstance(stream, openai.AsyncStream)
        return len([c async for c in stream if c.choices and c.choices[0].delta.content])

    async def httpx_lines() -> int:
        body = {"model": MODEL, "messages": wire, "stream": True}
        count = 0
        async with raw.stream("POST", f"{base_url}/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunk = json.loads(line[6:])
                    count += bool(chunk["choices"] and chunk["choices"][0]["delta"].get("content"))
        return count

    paths: dict[str, Callable[[], Awaitable[int]]] = {
        "app": app,
        "app model": app_model,
        "ChatOpenAI": chat_openai,
        "openai": openai_client,
        "httpx": httpx_lines,
    }
    cpu: dict[str, list[float]] = {name: [] for name in paths}
    for round_ in range(args.rounds + 2):
        for name, path in paths.items():
            began = time.process_time()
            tokens = await path()
            used = time.process_time() - began
            if tokens != args.tokens:
                raise SystemExit(f"{name}: {tokens} tokens, expected {args.tokens}")
            if round_ >= 2:  # two warm-up rounds
                cpu[name].append(used)
    await client.close()
    await raw.aclose()
    medians = {name: statistics.median(values) * 1000 for name, values in cpu.items()}
    return {
        "tokens": args.tokens,
        "rounds": args.rounds,
        "cpu_ms_per_reply": {k: round(v, 2) for k, v in medians.items()},
        "cpu_ms_per_token": {k: round(v / args.tokens, 3) for k, v in medians.items()},
        "app_model_pct_of_chatopenai": round(100 * medians["app model"] / medians["ChatOpenAI"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=60, help="measured rounds (60)")
    parser.add_argument("--tokens", type=int, default=40, help="tokens per reply (40)")
    parser.add_argument("--interval-ms", type=float, default=2.0, help="between tokens (2)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "endpoint.log"
        with log.open("wb") as err:
            endpoint = subprocess.Popen(
                [
                    *(sys.executable, str(ROOT / "bench" / "load.py")),
                    *("--serve-endpoint", str(port), "--tokens", str(args.tokens)),
                    *("--interval-ms", str(args.interval_ms)),
                ],
                stderr=err,
            )
        try:
            base_url = f"http://127.0.0.1:{port}/v1"
            models = urllib.request.Request(f"{base_url}/models")
            wait_until_serving(endpoint, models, "the scripted endpoint", log)
            figures = asyncio.run(measure(args, base_url))
        finally:
            stop_process(endpoint)
    print(
        f"CPU per reply of {args.tokens} tokens ({args.interval_ms} ms apart), median of "
        f"{args.rounds} rounds, this process only:"
    )
    for name, ms in figures["cpu_ms_per_reply"].items():
        print(f"  {name:11s} {ms:7.2f} ms   {figures['cpu_ms_per_token'][name]:6.3f} ms/token")
    print(f"app model / ChatOpenAI: {figures['app_model_pct_of_chatopenai']} %")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2), "utf-8")


if __name__ == "__main__":
    main()
