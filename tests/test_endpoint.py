"""The OpenAI-compatible backend against a real server on 127.0.0.1 (llama-cpp-python's)."""

from __future__ import annotations

import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from langchain_core.callbacks import AsyncCallbackHandler, AsyncCallbackManagerForLLMRun
from langchain_core.messages import HumanMessage
from pydantic import SecretStr

from chatllm.backends import Backends
from chatllm.backends import openai as openai_backend
from chatllm.backends.local import LocalBackend
from chatllm.backends.openai import EndpointChat, OpenAIBackend
from chatllm.chain import build_chain, chain_input
from chatllm.config import Settings, embedded_model_path
from chatllm.errors import (
    BackendAuthError,
    BackendError,
    BackendTimeout,
    BackendUnreachable,
    EndpointNotFound,
    UnknownModel,
)
from chatllm.generation import Generation
from chatllm.sampling import Sampling
from tests.support import Endpoint, WireTap


async def reply(backend: OpenAIBackend, sampling: Sampling, message: str = "Say hello.") -> str:
    chain = build_chain(
        backend.chat_model("smollm2", sampling),
        context_tokens=backend.context_tokens("smollm2"),
        reply_tokens=sampling.max_tokens,
        count=backend.count_tokens,
    )
    parts = [part async for part in chain.astream(chain_input("Be brief.", [], message))]
    return "".join(parts)


async def test_models_offered_come_from_the_endpoint(endpoint_settings: Settings) -> None:
    specs, problems = await Backends(endpoint_settings).profiles()
    assert problems == []
    assert [(s.backend, s.model) for s in specs] == [
        ("local", "SmolLM2-135M-Instruct"),
        ("openai", "smollm2"),
    ]


async def test_a_reply_streams_from_the_endpoint(endpoint_settings: Settings) -> None:
    text = await reply(OpenAIBackend(endpoint_settings), Sampling(max_tokens=30, temperature=0))
    assert text.strip()


@pytest.fixture
def tapped_settings(endpoint_settings: Settings, tap: WireTap) -> Settings:
    """The endpoint's settings, its requests going through the wire tap."""
    return endpoint_settings.model_copy(update={"openai_base_url": tap.base_url})


async def test_sampling_values_reach_the_endpoint(
    tapped_settings: Settings, tap: WireTap, endpoint: Endpoint
) -> None:
    backend = OpenAIBackend(tapped_settings)
    fixed = Sampling(
        max_tokens=30,
        temperature=1.3,
        top_p=0.9,
        top_k=17,
        repeat_penalty=1.15,
        seed=77,
        min_p=0.1,
        typical_p=0.9,
        presence_penalty=0.5,
        frequency_penalty=0.25,
    )
    assert await reply(backend, fixed) == await reply(backend, fixed)  # the seed is honoured
    first, second = tap.chat_requests()
    body = first.json()
    assert body["model"] == "smollm2" and body["stream"] is True
    assert body["temperature"] == 1.3 and body["top_p"] == 0.9 and body["seed"] == 77
    # OpenAI's name for the limit, and the one llama.cpp-style servers read.
    assert body["max_completion_tokens"] == body["max_tokens"] == 30
    assert body["top_k"] == 17 and body["repeat_penalty"] == 1.15  # llama.cpp's extras
    assert (body["min_p"], body["typical_p"], body["mirostat_mode"]) == (0.1, 0.9, 0)
    assert (body["presence_penalty"], body["frequency_penalty"]) == (0.5, 0.25)  # OpenAI's
    assert body["stream_options"] == {"include_usage": True}  # usage for the receipt
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert first.headers["authorization"] == f"Bearer {endpoint.api_key}"
    assert second.json() == body


async def test_the_max_tokens_slider_limits_an_endpoint_reply(
    endpoint_settings: Settings, local: LocalBackend
) -> None:
    backend = OpenAIBackend(endpoint_settings)
    text = await reply(backend, Sampling(max_tokens=6, temperature=0.0), "Write a long story.")
    # The endpoint serves the embedded model: its tokenizer counts the reply exactly.
    assert 0 < local.count_text(text) <= 6


async def test_extra_sampling_stays_home_when_turned_off(
    tapped_settings: Settings, tap: WireTap
) -> None:
    """CHATLLM_OPENAI_SEND_EXTRA_SAMPLING=false, for servers (api.openai.com) that refuse
    top_k and repeat_penalty."""
    plain = tapped_settings.model_copy(update={"openai_send_extra_sampling": False})
    assert await reply(OpenAIBackend(plain), Sampling(max_tokens=5, top_k=17))
    (request,) = tap.chat_requests()
    body = request.json()
    assert "top_k" not in body and "repeat_penalty" not in body and "max_tokens" not in body
    assert "min_p" not in body and "typical_p" not in body and "mirostat_mode" not in body
    assert body["max_completion_tokens"] == 5 and body["temperature"] == Sampling().temperature
    assert body["presence_penalty"] == 0.0  # OpenAI's own values still go
    # The receipt says which values shaped nothing, whatever the sliders said.
    assert OpenAIBackend(plain).not_sent(Sampling()) == [
        "min_p",
        "top_k",
        "repeat_penalty",
        "typical_p",
        "mirostat_mode",
        "mirostat_tau",
        "mirostat_eta",
    ]
    assert OpenAIBackend(tapped_settings).not_sent(Sampling()) == []


async def test_a_failed_request_is_retried_as_configured(
    tapped_settings: Settings, tap: WireTap
) -> None:
    once = tapped_settings.model_copy(update={"openai_max_retries": 1})
    tap.fail_next = 1
    assert await reply(OpenAIBackend(once), Sampling(max_tokens=5))  # the retry succeeded
    assert len(tap.chat_requests()) == 2
    never = tapped_settings.model_copy(update={"openai_max_retries": 0})
    tap.fail_next = 1
    with pytest.raises(BackendError, match="HTTP 500"):
        await reply(OpenAIBackend(never), Sampling(max_tokens=5))
    assert len(tap.chat_requests()) == 3


async def test_a_wrong_key_is_reported_as_refused(endpoint_settings: Settings) -> None:
    wrong = endpoint_settings.model_copy(update={"openai_api_key": SecretStr("not-the-key")})
    with pytest.raises(BackendAuthError) as refused:
        await reply(OpenAIBackend(wrong), Sampling(max_tokens=5))
    assert refused.value.status == 401
    with pytest.raises(BackendAuthError):
        await OpenAIBackend(wrong).models()


@pytest.fixture
def own_endpoint() -> Iterator[tuple[Endpoint, Settings]]:
    """A server of the test's own, which it may stop or kill."""
    server = Endpoint(model_path=embedded_model_path())
    server.start()
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        openai_base_url=server.base_url,
        openai_api_key=server.api_key,
        openai_max_retries=0,
    )
    yield server, settings
    server.stop()


async def test_a_stopped_server_is_reported_unreachable(
    own_endpoint: tuple[Endpoint, Settings],
) -> None:
    server, settings = own_endpoint
    backend = OpenAIBackend(settings)
    assert await reply(backend, Sampling(max_tokens=5))
    server.stop()
    with pytest.raises(BackendUnreachable) as refused:
        await reply(backend, Sampling(max_tokens=5))
    assert refused.value.url == server.base_url
    with pytest.raises(BackendUnreachable):
        await OpenAIBackend(settings).models()


async def test_a_server_too_slow_for_the_timeout_is_reported(
    tapped_settings: Settings, tap: WireTap
) -> None:
    impatient = tapped_settings.model_copy(update={"openai_timeout": 0.5})
    tap.hold_seconds = 60  # the server takes the request and does not answer in time
    try:
        with pytest.raises(BackendTimeout) as late:
            await reply(OpenAIBackend(impatient), Sampling(max_tokens=5))
    finally:
        tap.released.set()
    assert late.value.seconds == 0.5
    assert len(tap.chat_requests()) == 1  # it reached the server, which was too slow


class QuietServer:
    """A scripted endpoint (loopback) that starts a streamed reply, then sends only SSE
    keep-alive comments, as a server whose generation is stuck but whose event loop is not
    (llama-cpp-python's server pings every 15 s). Bounded: it ends after `pings`, with
    `then`."""

    def __init__(self, pings: int = 100, every: float = 0.1, then: str = "") -> None:
        chunk = {
            "id": "quiet",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "smollm2",
            "choices": [{"index": 0, "delta": {"content": "Once"}, "finish_reason": None}],
        }

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                return None

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                for _ in range(pings):
                    self.wfile.write(b": ping\n\n")
                    self.wfile.flush()
                    time.sleep(every)
                self.wfile.write(then.encode())

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_an_error_the_server_sends_mid_reply_is_reported_in_its_words(
    endpoint_settings: Settings,
) -> None:
    """A server that fails after it began to answer says so in the stream (`data:` with an
    `error` object), as OpenAI's does; the app reads the stream itself (not through the
    openai client's decoder), and raises it as the client would."""
    failing = QuietServer(
        pings=0, then='data: {"error": {"message": "the model ran out of memory"}}\n\n'
    )
    try:
        settings = endpoint_settings.model_copy(update={"openai_base_url": failing.base_url})
        with pytest.raises(BackendError, match="the model ran out of memory"):
            await reply(OpenAIBackend(settings), Sampling(max_tokens=5))
    finally:
        failing.stop()


async def test_a_streamed_reply_leaves_its_connection_to_the_next(
    tapped_settings: Settings, tap: WireTap
) -> None:
    """The rest of a streamed reply is read after `[DONE]`, so the next request goes over
    the same connection rather than a new one."""
    backend = OpenAIBackend(tapped_settings)
    first = await reply(backend, Sampling(max_tokens=5, temperature=0))
    second = await reply(backend, Sampling(max_tokens=5, temperature=0))
    assert first.strip() and second.strip()
    ports = [seen.client_port for seen in tap.chat_requests()]
    assert len(ports) == 2 and ports[0] == ports[1], ports


async def test_a_run_manager_given_to_the_stream_hears_every_token(
    endpoint_settings: Settings,
) -> None:
    """langchain-core hands the chat model's stream a run manager on some paths (its v2
    events); the app's stream reader tells it of each token, as langchain-openai's does."""

    class Tokens(AsyncCallbackHandler):
        def __init__(self) -> None:
            self.heard: list[str] = []

        async def on_llm_new_token(self, token: str, **kwargs: object) -> None:
            self.heard.append(token)

    listener = Tokens()
    manager = AsyncCallbackManagerForLLMRun(
        run_id=uuid.uuid4(), handlers=[listener], inheritable_handlers=[]
    )
    model = OpenAIBackend(endpoint_settings).chat_model("smollm2", Sampling(max_tokens=8))
    chunks = [
        chunk async for chunk in model._astream([HumanMessage("Say hello.")], run_manager=manager)
    ]
    assert listener.heard and listener.heard == [chunk.text for chunk in chunks]


async def test_a_reply_that_goes_quiet_while_the_server_pings_is_reported(
    endpoint_settings: Settings,
) -> None:
    """Keep-alives reset the HTTP read timeout; the app bounds the wait for each piece of
    the reply itself (with `asyncio.timeout`: langchain-openai's bound, with `wait_for`, can
    lose a Stop on Python 3.11)."""
    quiet = QuietServer()
    try:
        settings = endpoint_settings.model_copy(
            update={"openai_base_url": quiet.base_url, "openai_timeout": 1.0}
        )
        backend = OpenAIBackend(settings)
        model = backend.chat_model("smollm2", Sampling())
        assert isinstance(model, EndpointChat) and model.stream_chunk_timeout is None
        with pytest.raises(BackendTimeout) as late:
            await reply(backend, Sampling(max_tokens=5))
    finally:
        quiet.stop()
    assert late.value.seconds == 1.0


async def test_a_model_the_endpoint_does_not_serve_is_named(endpoint_settings: Settings) -> None:
    backend = OpenAIBackend(endpoint_settings)
    await backend.ensure_model("smollm2")
    with pytest.raises(UnknownModel) as unknown:
        await backend.ensure_model("gpt-imaginary")
    assert unknown.value.model == "gpt-imaginary"


async def test_a_server_that_dies_mid_reply_is_reported_unreachable(
    own_endpoint: tuple[Endpoint, Settings],
) -> None:
    server, settings = own_endpoint
    backend = OpenAIBackend(settings)
    sampling = Sampling(max_tokens=1000, temperature=0.9)
    chain = build_chain(
        backend.chat_model("smollm2", sampling),
        context_tokens=backend.context_tokens("smollm2"),
        reply_tokens=sampling.max_tokens,
        count=backend.count_tokens,
    )
    received: list[str] = []
    with pytest.raises(BackendUnreachable) as lost:
        async for part in chain.astream(chain_input("", [], "Write a very long story.")):
            received.append(part)
            if len(received) == 5:
                assert server.process is not None
                server.process.kill()
    assert len(received) >= 5
    assert "127.0.0.1" in lost.value.url


async def test_a_base_url_missing_v1_is_reported_as_a_wrong_address(
    endpoint: Endpoint, endpoint_settings: Settings
) -> None:
    root = endpoint.base_url.removesuffix("/v1")
    wrong = endpoint_settings.model_copy(update={"openai_base_url": root})
    with pytest.raises(EndpointNotFound) as missing:
        await OpenAIBackend(wrong).models()
    assert missing.value.url == root
    with pytest.raises(EndpointNotFound):
        await reply(OpenAIBackend(wrong), Sampling(max_tokens=5))


@pytest.fixture
def fresh_logprobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """What earlier tests' endpoints told about token probabilities, forgotten."""
    monkeypatch.setattr(openai_backend, "LOGPROBS_MISSING", {})


async def test_an_endpoint_reply_records_each_tokens_probabilities_for_the_xray(
    tapped_settings: Settings, tap: WireTap, local: LocalBackend, fresh_logprobs: None
) -> None:
    """Asked for (`logprobs`, `top_logprobs` as CHATLLM_XRAY_CANDIDATES says), read from
    the stream: the same log-probabilities the local engine records for the same reply."""
    sampling = Sampling(temperature=0.0, max_tokens=12, seed=3)
    generation = Generation(OpenAIBackend(tapped_settings), "smollm2", sampling)
    text = await generation.run([], "Name three colours.")
    (request,) = tap.chat_requests()
    assert (request.json()["logprobs"], request.json()["top_logprobs"]) == (True, 10)
    records = generation.token_records()
    assert records is not None and records.ids == "text"
    assert generation.receipt().token_records == "recorded"
    assert b"".join(records.pieces[int(t)] for t in records.rows["token"]).decode() == text
    # The embedded model on both sides: what the engine records for the same reply (its
    # end-of-generation token too, which the server does not send).
    here = Generation(local, local.settings.local_model_name, sampling)
    assert await here.run([], "Name three colours.") == text
    local_records = here.token_records()
    assert local_records is not None
    ended = here.receipt().finish_reason == "stop"
    assert len(records) == len(local_records) - ended
    assert np.allclose(
        records.rows["logprob"], local_records.rows["logprob"][: len(records)], atol=1e-3
    )
    assert np.allclose(
        records.rows["logprobs"], local_records.rows["logprobs"][: len(records)], atol=1e-3
    )


async def test_an_endpoint_that_ignores_token_probabilities_is_told_once_and_not_asked_again(
    tapped_settings: Settings, tap: WireTap, fresh_logprobs: None
) -> None:
    tap.drop_fields = {"logprobs", "top_logprobs"}  # the server never sees them
    backend = OpenAIBackend(tapped_settings)
    for _ in range(2):
        generation = Generation(backend, "smollm2", Sampling(max_tokens=5, seed=1))
        assert await generation.run([], "Say hello.")
        assert generation.token_records() is None
        receipt = generation.receipt()
        assert receipt.token_records == "ignored"
        assert "no token probabilities: the endpoint does not send them" in receipt.summary()
    first, second = tap.chat_requests()
    assert first.json()["logprobs"] is True and "logprobs" not in second.json()


async def test_an_endpoint_that_refuses_token_probabilities_answers_without_them(
    tapped_settings: Settings, tap: WireTap, fresh_logprobs: None
) -> None:
    backend = OpenAIBackend(tapped_settings)
    await backend.models()  # listed (and cached) first: the next request is the reply's
    tap.fail_next, tap.fail_status = 1, 400  # as a server that takes no `logprobs`
    generation = Generation(backend, "smollm2", Sampling(max_tokens=5, seed=1))
    assert await generation.run([], "Say hello.")  # the reply goes on
    assert generation.receipt().token_records == "refused"
    asked, again = tap.chat_requests()
    assert asked.json()["logprobs"] is True and "logprobs" not in again.json()
    later = Generation(backend, "smollm2", Sampling(max_tokens=5, seed=1))
    await later.run([], "Say hello.")
    assert "logprobs" not in tap.chat_requests()[-1].json()  # not asked again
    assert later.receipt().token_records == "refused"
    assert "拒絕" in later.receipt().summary("zh-TW")
