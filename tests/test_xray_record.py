"""What the local engine records with each token for the sampling X-ray (issue 27): the
token's log-probability and its strongest rivals', read from llama.cpp's last logits as it
is drawn, equal to what llama.cpp itself computes with `logits_all` for the same prompt and
seed; and nothing recorded when the operator turns it off."""

from __future__ import annotations

import numpy as np
import pytest
from llama_cpp import Llama

from chatllm.backends.local import LocalBackend
from chatllm.config import Settings
from chatllm.engine.tokens import read_records, top_ids
from chatllm.engine.worker import PROMPT_CHUNK
from chatllm.generation import Generation
from chatllm.sampling import Sampling

QUESTION = "Name three colours of the sea."


@pytest.fixture(scope="module")
def every_logit(local: LocalBackend) -> Llama:
    """The model in the test's process, keeping the logits of every position."""
    return Llama(
        model_path=str(local.settings.resolve_model_path()),
        n_ctx=local.settings.n_ctx,
        n_batch=PROMPT_CHUNK,
        logits_all=True,
        verbose=False,
    )


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


async def test_each_token_is_recorded_as_llama_cpp_computes_it(
    local: LocalBackend, every_logit: Llama
) -> None:
    top = local.settings.xray_candidates
    assert top == 10  # the default
    sampling = Sampling(temperature=1.0, top_k=0, top_p=1.0, max_tokens=16, seed=5)
    generation = Generation(local, local.settings.local_model_name, sampling)
    text = await generation.run([], QUESTION)
    records = read_records(bytes(generation.tokens), top)
    receipt = generation.receipt()
    assert receipt.completion_tokens is not None
    # Every token drawn, the end-of-generation one too when the model ended the reply.
    ended = receipt.finish_reason == "stop"
    assert len(records) == receipt.completion_tokens + ended
    drawn = [int(t) for t in records["token"]]
    assert every_logit.detokenize(drawn[: receipt.completion_tokens]).decode() == text

    raw = every_logit.create_chat_completion(
        messages=[
            {"role": "system", "content": sampling.system_prompt},
            {"role": "user", "content": QUESTION},
        ],
        **sampling.generation_params(),
    )
    assert raw["choices"][0]["message"]["content"] == text  # type: ignore[index]
    prompt = raw["usage"]["prompt_tokens"]  # type: ignore[index]
    for n, record in enumerate(records[: receipt.completion_tokens]):
        expected = log_softmax(every_logit.scores[prompt + n - 1])
        assert abs(record["logprob"] - expected[record["token"]]) < 1e-4, n
        rivals = np.argsort(-expected, kind="stable")[:top]
        assert list(record["ids"]) == list(rivals), n
        assert np.allclose(record["logprobs"], expected[rivals], atol=1e-4), n
        p = np.exp(expected)
        assert abs(record["entropy"] - float(-(p * expected).sum())) < 1e-3, n


def test_the_top_candidates_are_found_as_a_full_sort_finds_them() -> None:
    """The narrowing by slices' maxima (chatllm.engine.tokens.top_ids) on vocabularies of
    several sizes, ties and a single peak included."""
    rng = np.random.default_rng(27)
    for n in (7, 1024, 1025, 32000, 49152, 151936):
        for logits in (
            rng.normal(0, 3, n).astype(np.float32),
            np.round(rng.normal(0, 1, n), 1).astype(np.float32),  # many ties
            np.where(np.arange(n) == n // 2, 9.0, 0.0).astype(np.float32),
        ):
            for k in (1, 5, 20):
                want = np.argsort(-logits, kind="stable")[: min(k, n)]
                got = top_ids(logits, min(k, n))
                assert sorted(logits[got]) == sorted(logits[want]), (n, k)
                assert list(logits[got]) == sorted(logits[got], reverse=True)


async def test_nothing_is_recorded_when_the_operator_turns_it_off(settings: Settings) -> None:
    off = LocalBackend(settings.model_copy(update={"xray_candidates": 0}))
    generation = Generation(off, settings.local_model_name, Sampling(max_tokens=4, seed=1))
    assert await generation.run([], QUESTION)
    assert generation.tokens == b""
