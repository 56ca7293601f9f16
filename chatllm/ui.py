"""What each Chainlit hook does. `app.py` only wires these methods to the decorators."""

from __future__ import annotations

import asyncio
import logging
import sys

import chainlit as cl
from chainlit.context import ChainlitContextException
from chainlit.types import ThreadDict
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from pydantic import ValidationError

from chatllm.auth import LOCAL_USER, AuthMode, Passwords, decide_mode, ensure_auth_secret
from chatllm.chain import ReplyRecord, build_chain, chain_input
from chatllm.config import Settings, get_settings
from chatllm.errors import ChatLLMError, ConfigError, InvalidSampling, describe
from chatllm.history import FINISH_REASON, history_from_steps
from chatllm.i18n import t
from chatllm.models import Backends, ProfileSpec, draw_seed, local_engine, queue_listener
from chatllm.sampling import Sampling
from chatllm.store import ChatDataLayer, Database, FileStore, StoreError
from chatllm.store.users import Users

log = logging.getLogger("chatllm")

# Live state, kept out of thread metadata (see chatllm.store.datalayer.SESSION_ONLY_PREFIX).
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


def _settings_or_config_error() -> Settings:
    """The settings, or a ConfigError naming each malformed variable."""
    try:
        return get_settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"CHATLLM_{'_'.join(str(p) for p in error['loc']).upper()}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigError(f"Some settings are malformed: {problems}.") from exc


class ChatApp:
    """The app's behaviour behind the Chainlit hooks, for one process."""

    def __init__(self, settings: Settings) -> None:
        settings.resolve_model_path()  # a missing GGUF stops start-up, naming the setting
        self.settings = settings
        self.backends = Backends(settings)
        files = FileStore(settings.data_dir / "files")
        self.store = ChatDataLayer(Database(settings.database), files)
        self.users = Users(self.store.db, files)
        self.passwords = Passwords()
        self.auth_mode = AuthMode.LOCAL
        self._unavailable: list[ChatLLMError] = []

    @classmethod
    def from_environment(cls, host: str) -> ChatApp:
        """Build from the environment for serving on `host`; a configuration that cannot
        work ends the process with a message saying what to change."""
        try:
            app = cls(_settings_or_config_error())
            local_engine(app.settings)  # loaded now: a file that is no model stops start-up
            asyncio.run(app.prepare(host))
        except ConfigError as exc:
            print(f"chatllm cannot start: {exc}", file=sys.stderr)
            raise SystemExit(2) from exc
        return app

    async def prepare(self, host: str) -> None:
        """Bring the database schema up to date and choose how users log in."""
        ensure_auth_secret(self.settings.data_dir)
        # A database of its own: connections belong to the event loop that opened them,
        # and this runs before the server's loop starts.
        database = Database(self.settings.database)
        try:
            await database.migrate()
            users = await Users(database, self.store.files).with_passwords()
        finally:
            await database.close()
        self.auth_mode = decide_mode(host, len(users))
        log.info("Authentication: %s", self.auth_mode)

    def data_layer(self) -> ChatDataLayer:
        return self.store

    # ---- who is chatting

    async def local_login(self, _headers: object) -> cl.User | None:
        """Local mode: everyone reaching the loopback address is the one local user."""
        if self.auth_mode is not AuthMode.LOCAL:
            return None
        return cl.User(identifier=LOCAL_USER, display_name="Local user")

    async def login(self, username: str, password: str) -> cl.User | None:
        """Password mode; an unknown user takes as long to refuse as a wrong password."""
        stored = await self.users.password_hash(username)
        if await self.passwords.averify(stored, password):
            return cl.User(identifier=username)
        return None

    # ---- chat profiles: one per backend and model

    async def profiles(self, lang: str | None) -> list[cl.ChatProfile]:
        specs, problems = await self.backends.profiles()
        for problem in problems:
            log.warning("Endpoint models unavailable, offering the others: %s", problem)
        self._unavailable = problems  # told to the user when the chat starts
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

    def _default_sampling(self) -> Sampling:
        return Sampling(system_prompt=self.settings.system_prompt)

    async def start(self) -> None:
        sampling = self._default_sampling()
        cl.user_session.set(SAMPLING, sampling)
        cl.user_session.set(HISTORY, [])
        await cl.ChatSettings(sampling.widgets(language())).send()
        for problem in self._unavailable:
            text = t("notice.endpoint_unavailable", language(), reason=describe(problem))
            await cl.Message(content=text, author="chatllm").send()

    async def resume(self, thread: ThreadDict) -> None:
        """An old thread reopened: its memory and sliders come back as they were."""
        saved = (thread.get("metadata") or {}).get("chat_settings") or {}
        sampling = self._default_sampling().restore(saved)
        cl.user_session.set(SAMPLING, sampling)
        cl.user_session.set(HISTORY, history_from_steps(thread.get("steps") or []))
        # Without this the settings button is gone after a resume.
        await cl.ChatSettings(sampling.widgets(language())).send()

    async def update_settings(self, values: dict[str, object]) -> None:
        """Apply slider changes to the next reply; refuse bad values and keep the old ones."""
        lang = language()
        current: Sampling = cl.user_session.get(SAMPLING) or self._default_sampling()
        try:
            updated = current.update(values)
        except InvalidSampling as exc:
            log.info("Refused settings: %s", exc)
            await cl.ChatSettings(current.widgets(lang)).send()  # the panel shows the old values
            await cl.ErrorMessage(content=describe(exc, lang), author="chatllm").send()
            return
        cl.user_session.set(SAMPLING, updated)
        if cl.context.session.has_first_interaction:  # else the thread does not exist yet
            try:
                await self._save_thread_settings(updated)
            except ChatLLMError as exc:
                await cl.ErrorMessage(content=describe(exc, lang), author="chatllm").send()

    async def _save_thread_settings(self, sampling: Sampling) -> None:
        """Store the sliders and profile with the thread now, not only on disconnect."""
        try:
            await self.store.update_thread(
                cl.context.session.thread_id,
                metadata={
                    "chat_settings": sampling.as_settings(),
                    "chat_profile": self._current_profile().name,
                },
            )
        except ChatLLMError:
            raise
        except Exception as exc:
            raise StoreError(f"the settings could not be saved ({exc})") from exc

    async def answer(self, message: cl.Message) -> None:
        """One chat turn: stream the model's reply to `message` into the chat."""
        lang = language()
        sampling: Sampling = cl.user_session.get(SAMPLING) or self._default_sampling()
        history: list[BaseMessage] = cl.user_session.get(HISTORY) or []
        cl.user_session.set(HISTORY, history)
        try:
            # The user's words are safe on disk before the model runs.
            await self.store.save_step(message.to_dict())
            await self._save_thread_settings(sampling)
        except ChatLLMError as exc:
            await cl.ErrorMessage(content=describe(exc, lang), author="chatllm").send()
            return
        reply = cl.Message(content="")
        notice = QueueNotice(lang)
        listening = queue_listener.set(notice.show)
        finish = "error"
        spec = self._current_profile()
        if sampling.seed is None:  # drawn here, so the reply can say which seed made it
            sampling = sampling.model_copy(update={"seed": draw_seed()})
        record = ReplyRecord()
        try:
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
            async for text in chain.astream(inputs, config={"callbacks": [record]}):
                await reply.stream_token(text)
            finish = record.finish_reason or "stop"
        except asyncio.CancelledError:
            finish = "cancelled"
            raise
        except ChatLLMError as exc:
            await cl.ErrorMessage(content=describe(exc, lang), author="chatllm").send()
        except Exception as exc:
            log.exception("Reply failed")
            await cl.ErrorMessage(content=describe(exc, lang), author="chatllm").send()
        finally:
            queue_listener.reset(listening)
            reply.metadata = {
                FINISH_REASON: finish,
                "backend": spec.backend,
                "model": spec.model,
                "sampling": sampling.generation_params(),
                "prompt_messages": len(record.prompt),
            }
            await self._finish_turn(notice, reply, message, history)

    async def _finish_turn(
        self,
        notice: QueueNotice,
        reply: cl.Message,
        message: cl.Message,
        history: list[BaseMessage],
    ) -> None:
        """Keep whatever was written, even of a stopped or failed reply, marked with why
        it ended; the model remembers an exchange only if it got a reply."""
        await notice.clear()
        if not reply.content:
            return  # unanswered: kept in the thread, left out of the model's memory
        history.extend([HumanMessage(content=message.content), AIMessage(content=reply.content)])
        await reply.send()
        try:
            await self.store.save_step(reply.to_dict())
        except ChatLLMError as exc:
            await cl.ErrorMessage(content=describe(exc, language()), author="chatllm").send()
