"""Each setting of the README's Configuration table does what it says, seen in what the app
does with it (test_config.py checks that settings are read; these, that they are used)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from chatllm.chat import ChatApp
from chatllm.config import Settings
from chatllm.engine.client import close_local_engine, local_engine
from chatllm.engine.cpus import default_threads
from chatllm.receipts import prompt_digest
from tests.support import BrowserTab, Endpoint, open_chat, say


def replies(tab: BrowserTab) -> list[dict[str, object]]:
    return [m for m in tab.messages() if m["type"] == "assistant_message" and not m["isError"]]


async def chat_app(settings: Settings) -> ChatApp:
    app = ChatApp(settings)
    await app.prepare("127.0.0.1")
    return app


async def test_the_system_prompt_setting_starts_every_new_chat(
    settings: Settings, tmp_path: Path
) -> None:
    pirate = settings.model_copy(
        update={"system_prompt": "Answer like a pirate.", "data_dir": tmp_path}
    )
    app = await chat_app(pirate)
    tab = BrowserTab()
    await open_chat(app, tab)
    (panel,) = tab.panels()
    assert {w["id"]: w["initial"] for w in panel}["system_prompt"] == "Answer like a pirate."
    await app.update_settings({"max_tokens": 8})
    await say(app, tab, "Who are you?")
    (reply,) = replies(tab)
    receipt = reply["metadata"]["receipt"]  # type: ignore[index]
    assert receipt["sampling"]["system_prompt"] == "Answer like a pirate."
    received = [SystemMessage("Answer like a pirate."), HumanMessage("Who are you?")]
    assert receipt["prompt_digest"] == prompt_digest(received)  # what the model was sent


@pytest.fixture
def more_threads(settings: Settings) -> Iterator[Settings]:
    """One thread more than the default, so the setting shows wherever the tests run."""
    own = settings.model_copy(update={"n_threads": default_threads() + 1})
    yield own
    close_local_engine(own)


def test_the_threads_setting_reaches_llama_cpp(more_threads: Settings) -> None:
    engine = local_engine(more_threads)
    engine.start()
    # as llama.cpp reports it, in the engine: for generation and for the prompt alike
    # (the library would evaluate prompts on every CPU)
    assert engine.process.info["n_threads"] == default_threads() + 1
    assert engine.process.info["n_threads_batch"] == default_threads() + 1


def test_without_the_setting_llama_cpp_runs_a_thread_per_physical_core(
    settings: Settings,
) -> None:
    """llama-cpp-python's own default is half the CPUs: one core of this project's
    2-core machines idle (bench/cpu_threads.py)."""
    assert settings.n_threads is None
    engine = local_engine(settings)
    engine.start()
    assert engine.process.info["n_threads"] == default_threads()
    assert engine.process.info["n_threads_batch"] == default_threads()


@pytest.fixture
def another_model(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    """Another GGUF file, by path (a copy of the embedded model under another name)."""
    path = tmp_path / "Lighthouse-Keeper-135M.gguf"
    shutil.copyfile(settings.resolve_model_path(), path)
    own = settings.model_copy(update={"model_path": path, "data_dir": tmp_path})
    yield own
    close_local_engine(own)


async def test_another_gguf_by_path_is_the_local_model_offered_and_used(
    another_model: Settings,
) -> None:
    app = await chat_app(another_model)
    (profile,) = await app.profiles(None, "en")
    assert profile.name == "local:Lighthouse-Keeper-135M"
    assert profile.display_name == "Local · Lighthouse-Keeper-135M"
    tab = BrowserTab(chat_profile=profile.name)
    await open_chat(app, tab)
    await app.update_settings({"max_tokens": 8, "temperature": 0.0})
    await say(app, tab, "Hello!")
    (reply,) = replies(tab)
    receipt = reply["metadata"]["receipt"]  # type: ignore[index]
    assert (receipt["backend"], receipt["model"]) == ("local", "Lighthouse-Keeper-135M")
    assert local_engine(another_model).process.ready  # its own engine loaded that file


async def test_the_endpoint_context_setting_trims_what_the_endpoint_is_sent(
    endpoint: Endpoint, endpoint_settings: Settings
) -> None:
    small = endpoint_settings.model_copy(
        update={"openai_context_tokens": 400, "openai_models": [endpoint.alias]}
    )
    app = await chat_app(small)
    tab = BrowserTab(chat_profile=f"openai:{endpoint.alias}")
    await open_chat(app, tab)
    await app.update_settings({"max_tokens": 8, "temperature": 0.0})
    for n in range(4):  # each exchange about 110 estimated tokens
        await say(app, tab, f"Note {n}: " + "the lighthouse keeper writes the weather " * 6)
    sent = [r["metadata"]["receipt"]["prompt_messages"] for r in replies(tab)]  # type: ignore[index]
    assert sent[0] == 2  # the system prompt and the note
    assert max(sent) < 2 * 4  # never the whole conversation: trimmed to 400 - 8 tokens
    assert sent[-1] >= 2
    await say(app, tab, "word " * 600)  # alone too long for 400 tokens
    (error,) = tab.errors()
    # Longer than the whole context the setting gives (400 tokens): no shorter reply helps.
    assert "too long" in error and "holds 400" in error
