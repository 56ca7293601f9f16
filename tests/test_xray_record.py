"""What the local engine records with each token for the sampling X-ray (issue 27): the
token's log-probability and its strongest rivals', read from llama.cpp's last logits as it
is drawn, equal to what llama.cpp itself computes with `logits_all` for the same prompt and
seed; and nothing recorded when the operator turns it off."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from chainlit.user import User
from llama_cpp import Llama

from chatllm.backends.local import LocalBackend
from chatllm.chat import ChatApp
from chatllm.config import Settings
from chatllm.engine.tokens import read_records, record_dtype, top_ids
from chatllm.engine.worker import PROMPT_CHUNK
from chatllm.generation import Generation
from chatllm.sampling import Sampling
from chatllm.store import ChatDataLayer
from chatllm.xray.records import TextTokens, TokenRecords, UnreadableRecords
from tests.support import BrowserTab, open_chat, say

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
    assert receipt.token_records == "recorded"
    assert receipt.completion_tokens is not None
    # Every token drawn, the end-of-generation one too when the model ended the reply.
    ended = receipt.finish_reason == "stop"
    assert len(records) == receipt.completion_tokens + ended
    drawn = [int(t) for t in records["token"]]
    assert every_logit.detokenize(drawn[: receipt.completion_tokens]).decode() == text
    # Each id's text piece came with the records: the reply's, and every candidate's.
    pieces = generation.pieces
    assert b"".join(pieces[t] for t in drawn[: receipt.completion_tokens]).decode() == text
    assert {int(i) for record in records for i in record["ids"]} <= pieces.keys()
    if ended:
        assert pieces[drawn[-1]] == b"<|im_end|>"  # the end, named as what it is

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
    assert generation.tokens == b"" and generation.token_records() is None
    assert generation.receipt().token_records == "off"


def test_records_pack_into_a_blob_that_reads_back_and_a_broken_one_is_refused() -> None:
    rows = np.array([(7, -0.5, 1.0, [7, 9, 2], [-0.5, -1.5, -3.0])], dtype=record_dtype(3))
    records = TokenRecords(3, rows, {7: "海".encode()[:2], 9: b" sea", 2: b"<|im_end|>"})
    again = TokenRecords.unpack(records.pack())
    assert again.view() == records.view()
    assert again.view()["pieces"]["7"] == {"text": "\ufffd", "hex": "e6b5"}  # part of 海
    blob = records.pack()
    for broken in (b"", b"not zlib", blob[:-3], zlib.compress(b"\x05\x00\x00\x00{}abc")):
        with pytest.raises(UnreadableRecords):
            TokenRecords.unpack(broken)


async def test_a_replys_records_are_stored_with_it_and_go_with_its_thread(
    store: ChatDataLayer,
) -> None:
    """Apart from the step (never in the thread a page opens), in the reply's own write,
    on both databases; read for that thread only; removed with the thread."""
    user = await store.create_user(User(identifier="ada"))
    assert user is not None
    await store.update_thread("t1", name="T", user_id=user.id)
    await store.save_message(
        {
            "id": "u1",
            "threadId": "t1",
            "type": "user_message",
            "output": "Hi",
            "createdAt": "2026-05-01T10:00:00Z",
        }
    )
    blob = TokenRecords(
        1, np.array([(3, -0.2, 0.5, [3], [-0.2])], dtype=record_dtype(1)), {3: b"Hello"}
    ).pack()
    await store.save_message(
        {"id": "r1", "threadId": "t1", "type": "assistant_message", "output": "Hello",
         "createdAt": "2026-05-01T10:00:01Z", "metadata": {"kind": "reply", "reply_to": "u1"}},
        tokens=blob,
    )  # fmt: skip
    assert await store.token_records("t1", "r1") == blob
    assert await store.token_records("other", "r1") is None
    thread = await store.get_thread("t1")
    assert thread is not None and b"Hello".hex() not in repr(thread)  # not with the page's
    assert all("tokens" not in (s.get("metadata") or {}) for s in thread["steps"])
    await store.delete_thread("t1")
    assert await store.token_records("t1", "r1") is None


async def test_a_reply_in_the_chat_is_stored_with_each_token_it_drew(app: ChatApp) -> None:
    tab = BrowserTab()
    await open_chat(app, tab)
    await app.update_settings({"max_tokens": 8, "temperature": 0.0})
    await say(app, tab, QUESTION)
    thread = await app.store.get_thread(tab.session.thread_id)
    assert thread is not None
    (reply,) = [s for s in thread["steps"] if s["type"] == "assistant_message"]
    blob = await app.store.token_records(thread["id"], reply["id"])
    assert blob is not None
    records = TokenRecords.unpack(blob)
    receipt = reply["metadata"]["receipt"]
    count = receipt["completion_tokens"]
    assert len(records) == count + (receipt["finish_reason"] == "stop")  # the end's too
    drawn = b"".join(records.pieces[int(t)] for t in records.rows["token"][:count]).decode()
    assert drawn == reply["output"]


def test_an_endpoints_odd_logprobs_make_records_the_page_can_read() -> None:
    """A server's missing log-probability, fewer candidates than asked for, and byte
    pieces: records whose view is JSON a browser reads (it has no infinity)."""
    texts = TextTokens(3)
    data, pieces = texts.take(
        [
            {"token": "a", "logprob": None, "top_logprobs": [{"token": "a", "logprob": -0.1}]},
            {"token": "", "bytes": [230, 181], "logprob": -2.0, "top_logprobs": []},
        ]
    )
    records = TokenRecords.of(3, data, pieces, "text")
    assert records is not None
    view = json.loads(json.dumps(records.view(), allow_nan=False))
    first, second = view["tokens"]
    assert first["logprob"] is None and first["candidates"] == [[0, -0.1]]
    assert second["candidates"] == [] and view["pieces"]["1"]["hex"] == "e6b5"
