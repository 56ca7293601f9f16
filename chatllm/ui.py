"""What each Chainlit hook does. `app.py` only wires these methods to the decorators."""

from __future__ import annotations

import asyncio
import logging
import sys

import chainlit as cl
from chainlit.context import ChainlitContextException
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from chatllm.chain import build_chain, chain_input
from chatllm.config import Settings, get_settings
from chatllm.errors import ChatLLMError, ConfigError, InvalidSampling, describe
from chatllm.i18n import t
from chatllm.models import Backends, ProfileSpec, local_engine, queue_listener
from chatllm.sampling import Sampling

log = logging.getLogger("chatllm")

SAMPLING = "chatllm.sampling"
HISTORY = "chatllm.history"


def language() -> str:
    """The browser's language for this session (HTTP contexts have none)."""
    try:
        session = cl.context.session
    except ChainlitContextException:
        return "en"
    return getattr(session, "language", None) or "en"


class QueueNotice:
    """A chat message saying how many requests wait ahead; removed once generation starts."""

    def __init__(self, lang: str) -> None:
        self.lang = lang
        self.message: cl.Message | None = None

    async def show(self, ahead: int) -> None:
        if ahead <= 0:
            await self.clear()
            return
        text = t("queue.waiting", self.lang, ahead=ahead)
        if self.message is None:
            self.message = cl.Message(content=text, author="chatllm")
            await self.message.send()
        else:
            self.message.content = text
            await self.message.update()

    async def clear(self) -> None:
        if self.message is not None:
            message, self.message = self.message, None
            await message.remove()


class ChatApp:
    """The app's behaviour behind the Chainlit hooks, for one process."""

    def __init__(self, settings: Settings) -> None:
        settings.resolve_model_path()  # a missing GGUF stops start-up, naming the setting
        self.settings = settings
        self.backends = Backends(settings)

    @classmethod
    def from_environment(cls) -> ChatApp:
        """Build from the environment; a configuration that cannot work ends the process."""
        try:
            return cls(get_settings())
        except ConfigError as exc:
            print(f"chatllm cannot start: {exc}", file=sys.stderr)
            raise SystemExit(2) from exc

    async def startup(self) -> None:
        """Load the local model before the first message, off the event loop."""
        await asyncio.to_thread(local_engine, self.settings)

    # ---- chat profiles: one per backend and model

    async def profiles(self, lang: str | None) -> list[cl.ChatProfile]:
        specs, problems = await self.backends.profiles()
        for problem in problems:
            log.warning("Endpoint models unavailable, offering the others: %s", problem)
        return [self._profile(spec, lang, default=index == 0) for index, spec in enumerate(specs)]

    def _profile(self, spec: ProfileSpec, lang: str | None, default: bool) -> cl.ChatProfile:
        if spec.backend == "local":
            title = t("profile.local", lang, model=spec.model)
            about = t("profile.local.desc", lang, model=spec.model)
        else:
            url = self.settings.openai_base_url or ""
            title = t("profile.remote", lang, model=spec.model)
            about = t("profile.remote.desc", lang, model=spec.model, url=url)
        return cl.ChatProfile(
            name=spec.name,
            display_name=title,
            markdown_description=about,
            icon="/public/favicon.svg",
            default=default,
        )

    def _current_profile(self) -> ProfileSpec:
        name = cl.user_session.get("chat_profile")
        if name:
            return ProfileSpec.parse(name)
        return ProfileSpec("local", self.settings.local_model_name)

    # ---- a chat

    async def start(self) -> None:
        sampling = Sampling(system_prompt=self.settings.system_prompt)
        cl.user_session.set(SAMPLING, sampling)
        cl.user_session.set(HISTORY, [])
        await cl.ChatSettings(sampling.widgets(language())).send()

    async def update_settings(self, values: dict[str, object]) -> None:
        """Apply slider changes to the next reply; refuse bad values and keep the old ones."""
        lang = language()
        current: Sampling = cl.user_session.get(SAMPLING) or Sampling(
            system_prompt=self.settings.system_prompt
        )
        try:
            cl.user_session.set(SAMPLING, current.update(values))
        except InvalidSampling as exc:
            log.info("Refused settings: %s", exc)
            await cl.ChatSettings(current.widgets(lang)).send()  # the panel shows the old values
            await cl.ErrorMessage(content=describe(exc, lang), author="chatllm").send()

    async def answer(self, message: cl.Message) -> None:
        """One chat turn: stream the model's reply to `message` into the chat."""
        lang = language()
        sampling: Sampling = cl.user_session.get(SAMPLING) or Sampling(
            system_prompt=self.settings.system_prompt
        )
        history: list[BaseMessage] = cl.user_session.get(HISTORY) or []
        cl.user_session.set(HISTORY, history)
        reply = cl.Message(content="")
        notice = QueueNotice(lang)
        listening = queue_listener.set(notice.show)
        finish = "stop"
        try:
            spec = self._current_profile()
            backend = self.backends.get(spec.backend)
            # Some servers (llama-cpp-python's among them) answer an unknown model name with
            # their default model; that reply would be credited to the wrong model.
            await backend.ensure_model(spec.model)
            chain = build_chain(
                backend.chat_model(spec.model, sampling),
                context_tokens=backend.context_tokens(spec.model),
                reply_tokens=sampling.max_tokens,
                count=backend.count_tokens,
            )
            inputs = chain_input(sampling.system_prompt, history, message.content)
            async for text in chain.astream(inputs):
                await reply.stream_token(text)
        except asyncio.CancelledError:
            finish = "cancelled"
            raise
        except ChatLLMError as exc:
            finish = "error"
            await cl.ErrorMessage(content=describe(exc, lang), author="chatllm").send()
        except Exception as exc:
            finish = "error"
            log.exception("Reply failed")
            await cl.ErrorMessage(content=describe(exc, lang), author="chatllm").send()
        finally:
            queue_listener.reset(listening)
            await _finish_turn(notice, reply, message, history, finish)


async def _finish_turn(
    notice: QueueNotice,
    reply: cl.Message,
    message: cl.Message,
    history: list[BaseMessage],
    finish: str,
) -> None:
    await notice.clear()
    history.append(HumanMessage(content=message.content))
    if reply.content:
        history.append(AIMessage(content=reply.content))
        reply.metadata = {**(reply.metadata or {}), "finish_reason": finish}
        await reply.send()
