"""Receipts: every reply says what made it and how it went, measured on the real model."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from llama_cpp import Llama
from pydantic import ValidationError

from chatllm.backends.local import LocalBackend
from chatllm.backends.openai import OpenAIBackend
from chatllm.compare import SettingsSet, run_comparison, similarity, word_diff, words
from chatllm.config import Settings, embedded_model_path
from chatllm.engine.worker import PROMPT_CHUNK
from chatllm.generation import Generation
from chatllm.i18n import t
from chatllm.receipts import Receipt, receipt_of
from chatllm.sampling import Sampling
from chatllm.store.search import index_text
from tests.support import Endpoint

STORY = "Write a long story about a lighthouse keeper and her cat."


def model(local: LocalBackend) -> str:
    return local.settings.local_model_name


@pytest.fixture(scope="module")
def raw_llama(local: LocalBackend) -> Llama:
    """The model loaded in the test's own process, as llama-cpp-python serves it unwrapped
    (the app's runs in its engine process), with the app's context and batch size."""
    return Llama(
        model_path=str(local.settings.resolve_model_path()),
        n_ctx=local.settings.n_ctx,
        n_batch=PROMPT_CHUNK,
        verbose=False,
    )


async def test_token_counts_match_llama_cpp_own_usage(
    local: LocalBackend, raw_llama: Llama
) -> None:
    """The streamed path counts exactly what llama-cpp-python reports for the same call."""
    sampling = Sampling(temperature=0.0, max_tokens=60, seed=5, system_prompt="Be brief.")
    for max_tokens in (7, 200):
        generation = Generation(local, model(local), sampling.update({"max_tokens": max_tokens}))
        text = await generation.run([], "Name three colours.")
        raw = raw_llama.create_chat_completion(
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Name three colours."},
            ],
            **generation.sampling.generation_params(),
        )
        receipt = generation.receipt()
        assert text == raw["choices"][0]["message"]["content"]  # type: ignore[index]
        assert receipt.prompt_tokens == raw["usage"]["prompt_tokens"]  # type: ignore[index]
        assert receipt.completion_tokens == raw["usage"]["completion_tokens"]  # type: ignore[index]
        assert receipt.finish_reason == raw["choices"][0]["finish_reason"]  # type: ignore[index]
        assert not receipt.tokens_estimated
    assert receipt.finish_reason == "stop"  # the 200-token reply ended by itself


async def test_a_receipt_records_settings_seed_tokens_and_speed(local: LocalBackend) -> None:
    sampling = Sampling(temperature=0.9, top_p=0.8, top_k=30, repeat_penalty=1.2, max_tokens=24)
    generation = Generation(local, model(local), sampling)
    history = [HumanMessage("Hi"), AIMessage("Hello! How can I help?")]
    await generation.run(history, STORY)
    receipt = generation.receipt()
    assert (receipt.backend, receipt.model) == ("local", model(local))
    drawn = receipt.seed
    assert isinstance(drawn, int)  # drawn for the empty seed slider, and recorded
    assert receipt.sampling == {**sampling.model_dump(), "seed": drawn}
    tokens = receipt.completion_tokens
    assert tokens is not None
    # The drawn seed decides whether the model ends the story on its own before the limit
    # (now and then it does: seen in CI).
    assert (receipt.finish_reason, tokens) == ("length", 24) or (
        receipt.finish_reason == "stop" and 0 < tokens < 24
    )
    assert receipt.prompt_messages == 4  # system, the exchange, the new message
    assert receipt.prompt_tokens is not None and receipt.prompt_tokens > 20
    assert receipt.ttft_ms is not None and receipt.ttft_ms > 0
    assert receipt.duration_ms is not None and receipt.duration_ms > receipt.ttft_ms
    # tokens/s: the tokens after the first, over the time after the first.
    after_first = (receipt.duration_ms - receipt.ttft_ms) / 1000
    assert receipt.tokens_per_second == pytest.approx((tokens - 1) / after_first, rel=1e-3)
    assert receipt.queued_ms == 0.0  # nobody was ahead of it
    made = datetime.fromisoformat(receipt.created_at)
    assert abs(datetime.now(UTC) - made) < timedelta(minutes=5)
    summary = receipt.summary("en")
    for part in (
        "local",
        "T 0.9",
        "top_p 0.8",
        "top_k 30",
        f"seed {drawn}",
        f"+ {tokens} tokens",
        t("receipt.ttft", "en", ms=f"{receipt.ttft_ms:.0f}"),
        t("receipt.speed", "en", rate=f"{receipt.tokens_per_second:.1f}"),
    ):
        assert part in summary
    assert t(f"finish.{receipt.finish_reason}", "zh-TW") in receipt.summary("zh-TW")
    again = receipt_of({"receipt": receipt.model_dump(mode="json")})
    assert again == receipt  # what is stored reads back unchanged
    with pytest.raises(ValidationError):  # a receipt, once made, is what made the reply
        receipt.finish_reason = "stop"


def test_a_receipt_stored_without_some_fields_reads_back_with_their_defaults() -> None:
    """Receipts stored by earlier versions lack the newer fields."""
    old = receipt_of(
        {"receipt": {"backend": "local", "model": "m", "sampling": {}, "finish_reason": "stop"}}
    )
    assert old is not None
    assert (old.tokens_estimated, old.queued_ms, old.prompt_messages) == (False, 0.0, 0)
    summary = old.summary("en")
    assert "T ? · top_p ? · min_p 0.05" in summary and "None" not in summary
    assert "≈" not in summary
    # The local model's chain used llama-cpp-python's values where the app sent none:
    # those are what made its replies. An endpoint was never sent them: unknown.
    assert old.sampling["min_p"] == 0.05 and old.sampling["mirostat_mode"] == 0
    remote = receipt_of(
        {"receipt": {"backend": "openai", "model": "m", "sampling": {}, "finish_reason": "stop"}}
    )
    assert remote is not None and "min_p" not in remote.sampling
    assert "min_p ?" in remote.summary("en")


@pytest.mark.parametrize(
    ("changed", "baseline"),
    [
        # min_p 1 keeps the likeliest token alone: at T 1 the greedy reply, any seed.
        ({"min_p": 1.0}, {"min_p": 0.0}),
        # typical_p this low keeps one candidate (the most typical), whatever the seed.
        ({"typical_p": 0.01}, {}),
        # The penalties act before greedy picks: the greedy reply changes.
        ({"temperature": 0.0, "presence_penalty": 2.0}, {"temperature": 0.0}),
        ({"temperature": 0.0, "frequency_penalty": 2.0}, {"temperature": 0.0}),
        ({"mirostat_mode": 2, "mirostat_tau": 1.0}, {}),
    ],
)
async def test_each_new_sampler_reaches_llama_cpp_and_changes_the_reply(
    local: LocalBackend,
    raw_llama: Llama,
    changed: dict[str, object],
    baseline: dict[str, object],
) -> None:
    """Each value makes the reply llama-cpp-python itself makes with it (same prompt,
    same seed), and a different one than without it."""
    base = Sampling(temperature=1.0, top_k=0, top_p=1.0, max_tokens=24, seed=21)

    async def app_reply(values: dict[str, object], seed: int = 21) -> str:
        sampling = base.update({**values, "seed": seed})
        return await Generation(local, model(local), sampling).run([], STORY)

    made = await app_reply(changed)
    raw = raw_llama.create_chat_completion(
        messages=[
            {"role": "system", "content": base.system_prompt},
            {"role": "user", "content": STORY},
        ],
        **base.update(changed).generation_params(),
    )
    assert made == raw["choices"][0]["message"]["content"]  # type: ignore[index]
    assert made != await app_reply(baseline)
    if "min_p" in changed or "typical_p" in changed:
        assert made == await app_reply(changed, seed=22)  # one candidate: no draw


async def test_a_fixed_seed_replays_identical_text(local: LocalBackend) -> None:
    """Identical even when the model's cache holds other work: a conversation went on
    after the reply (its cache then holds the reply's tokens computed one at a time), and
    another reply came in between. Reusing that cache as llama-cpp-python does made 5 of
    8 such replays differ."""
    for seed in range(4):
        sampling = Sampling(temperature=1.2, top_p=1.0, max_tokens=30, seed=seed)
        first_turn = Generation(local, model(local), sampling.update({"seed": seed + 50}))
        await first_turn.run([], "Hello there.")
        history = [HumanMessage("Hello there."), AIMessage(first_turn.text)]
        original = Generation(local, model(local), sampling)
        await original.run(history, STORY)
        later = [*history, HumanMessage(STORY), AIMessage(original.text)]
        other = Generation(local, model(local), sampling.update({"seed": 7}))
        await other.run(later, "And then?")
        replay = Generation(
            local, model(local), Sampling.model_validate(original.receipt().sampling)
        )
        await replay.run(history, STORY)
        assert replay.text == original.text, f"seed {seed}"
        assert replay.receipt().prompt_digest == original.receipt().prompt_digest


async def test_a_stopped_reply_is_receipted_as_cancelled(local: LocalBackend) -> None:
    generation = Generation(local, model(local), Sampling(max_tokens=400, temperature=0.0))

    underway = asyncio.Event()

    async def consume() -> None:
        async for _ in generation.stream([], STORY):
            if len(generation.text) >= 20:
                underway.set()

    task = asyncio.create_task(consume())
    await underway.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    receipt = generation.receipt()
    assert receipt.finish_reason == "cancelled"
    # No last chunk brought the usage, but the local engine counted as it went: exact.
    assert not receipt.tokens_estimated
    assert receipt.completion_tokens is not None and receipt.completion_tokens > 0
    assert receipt.prompt_tokens is not None and receipt.prompt_tokens > 0


async def test_an_endpoint_reply_gets_a_receipt(
    endpoint: Endpoint, endpoint_settings: Settings
) -> None:
    backend = OpenAIBackend(endpoint_settings)
    sampling = Sampling(temperature=0.0, max_tokens=12, seed=3)
    generation = Generation(backend, endpoint.alias, sampling)
    await generation.run([], STORY)
    receipt = generation.receipt()
    assert (receipt.backend, receipt.model, receipt.seed) == ("openai", endpoint.alias, 3)
    assert receipt.finish_reason == "length"
    assert receipt.completion_tokens is not None and receipt.completion_tokens > 0
    assert receipt.prompt_tokens is not None and receipt.prompt_tokens > 0
    assert receipt.ttft_ms is not None


async def test_a_comparison_runs_each_set_on_one_seed(local: LocalBackend) -> None:
    base = Sampling(max_tokens=16, seed=11)
    sets = [
        SettingsSet("cold", base.update({"temperature": 0.0})),
        SettingsSet("code", base.update({"temperature": 0.4, "top_p": 0.5})),
        SettingsSet("hot", base.update({"temperature": 1.5, "top_p": 1.0})),
    ]
    seen: list[tuple[int, ...]] = []

    async def progress(columns: list) -> None:  # type: ignore[type-arg]
        seen.append(tuple(len(c.generation.text) for c in columns))

    columns = await run_comparison(
        local, model(local), sets, [], STORY, parallel=False, progress=progress
    )
    assert [c.label for c in columns] == ["cold", "code", "hot"]
    receipts = [Receipt.model_validate(c.as_dict()["receipt"]) for c in columns]
    assert [r.sampling["temperature"] for r in receipts] == [0.0, 0.4, 1.5]
    assert {r.seed for r in receipts} == {11}
    assert all(c.generation.text for c in columns)
    final, during = seen[-1], seen[:-1]
    assert final == tuple(len(c.generation.text) for c in columns)
    # Heard as the text arrives, a piece at a time (16 tokens a column), not only at the end.
    assert len(during) >= 3 * 8
    assert any(0 < lengths[0] < final[0] for lengths in during)
    # In turn: a column starts once the one before it has all its text.
    for lengths in during:
        for before, after in zip(range(2), range(1, 3), strict=True):
            assert lengths[after] == 0 or lengths[before] == final[before]


def test_word_diff_splits_words_and_chinese_characters() -> None:
    assert words("Hello, world!") == ["Hello", ",", " ", "world", "!"]
    assert words("你好世界 ok") == ["你", "好", "世", "界", " ", "ok"]
    a, b = "The quick brown fox 跳過了狗", "The slow brown fox 跳過了貓 today"
    diff = word_diff(a, b)
    assert "".join(text for op, text in diff if op != "+") == a
    assert "".join(text for op, text in diff if op != "-") == b
    assert ("-", "quick") in diff and ("+", "slow") in diff
    assert ("-", "狗") in diff
    assert similarity(a, a) == 1.0 and 0 < similarity(a, b) < 1


def test_the_word_diff_and_search_take_the_same_characters_as_words_of_their_own() -> None:
    """Kana, CJK punctuation and fullwidth forms are single words in the diff, as each of
    their letters is a word of its own in the search index (one definition,
    chatllm.i18n.CJK); punctuation is never searched for."""
    text = "カナ。ＡＢ「引用」漢字"
    assert words(text) == list(text)
    assert index_text(text).split() == [c.lower() for c in text if c.isalnum()]
    assert words("한국어 ok") == ["한국어", " ", "ok"]  # Korean is written with spaces


async def test_a_reply_cut_off_by_the_server_is_an_error_not_an_empty_reply(
    tmp_path: Path,
) -> None:
    """llama-cpp-python's server, as started by default, ends a streaming reply with no
    text and no finish reason when another request arrives."""
    interrupting = Endpoint(model_path=embedded_model_path(), interrupt=True)
    interrupting.start()
    try:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            data_dir=tmp_path,
            openai_base_url=interrupting.base_url,
            openai_api_key=interrupting.api_key,
            openai_max_retries=0,
        )
        backend = OpenAIBackend(settings)
        sampling = Sampling(temperature=0.0, max_tokens=60)
        generations = [Generation(backend, interrupting.alias, sampling) for _ in range(3)]
        results = await asyncio.gather(
            *(g.run([], STORY) for g in generations), return_exceptions=True
        )
    finally:
        interrupting.stop()
    cut = [g for g, r in zip(generations, results, strict=True) if isinstance(r, Exception)]
    assert cut, "the server cut no reply short"
    for generation in cut:
        assert generation.receipt().finish_reason == "error"
        assert generation.receipt().error == generation.error
        assert "--interrupt_requests False" in (generation.error or "")
