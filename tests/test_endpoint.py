"""The OpenAI-compatible backend against a real server on 127.0.0.1 (llama-cpp-python's)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from chatllm.chain import build_chain, chain_input
from chatllm.config import Settings, embedded_model_path
from chatllm.errors import (
    BackendAuthError,
    BackendTimeout,
    BackendUnreachable,
    EndpointNotFound,
    UnknownModel,
)
from chatllm.models import Backends, OpenAIBackend
from chatllm.sampling import Sampling
from tests.support import Endpoint


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


async def test_sampling_values_reach_the_endpoint(endpoint_settings: Settings) -> None:
    backend = OpenAIBackend(endpoint_settings)
    fixed = Sampling(max_tokens=30, temperature=1.3, top_p=1.0, seed=77)
    assert await reply(backend, fixed) == await reply(backend, fixed)
    model = backend.chat_model("smollm2", fixed)
    assert isinstance(model, ChatOpenAI)
    assert (model.temperature, model.top_p, model.max_tokens, model.seed) == (1.3, 1.0, 30, 77)
    assert model.extra_body == {"top_k": fixed.top_k, "repeat_penalty": fixed.repeat_penalty}


def test_requests_have_an_explicit_timeout_and_retry_count(endpoint_settings: Settings) -> None:
    model = OpenAIBackend(endpoint_settings).chat_model("smollm2", Sampling())
    assert isinstance(model, ChatOpenAI)
    assert model.request_timeout == endpoint_settings.openai_timeout
    assert model.max_retries == endpoint_settings.openai_max_retries


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
    endpoint: Endpoint, endpoint_settings: Settings
) -> None:
    # llama-cpp-python's server answers one request at a time: keep it busy with a long
    # generation, and a second request waits past its timeout.
    async with httpx.AsyncClient(timeout=120) as client:
        busy = asyncio.create_task(
            client.post(
                f"{endpoint.base_url}/chat/completions",
                headers={"Authorization": f"Bearer {endpoint.api_key}"},
                json={
                    "model": "smollm2",
                    "messages": [{"role": "user", "content": "Write a very long story."}],
                    "max_tokens": 400,
                    "temperature": 0.8,
                    # No end-of-text tokens: it cannot finish early on a fast machine.
                    "logit_bias": {"0": -100, "2": -100},
                },
            )
        )
        await asyncio.sleep(0.5)
        impatient = endpoint_settings.model_copy(update={"openai_timeout": 0.5})
        with pytest.raises(BackendTimeout) as late:
            await reply(OpenAIBackend(impatient), Sampling(max_tokens=5))
        assert late.value.seconds == 0.5
        assert (await busy).status_code == 200


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
