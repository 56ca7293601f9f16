"""The app behind the Chainlit hooks: its services, who is chatting, the chat profiles, a
chat started or resumed, and each message handed to what answers it."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

import chainlit as cl
from chainlit.types import ThreadDict

from chatllm.backends import Backends, ProfileSpec
from chatllm.chat.branches import Branches, with_switchers
from chatllm.chat.commands import Commands
from chatllm.chat.panel import (
    BRANCHES,
    COMPARE,
    EXPORT,
    IMPORT,
    PRESETS,
    SHARE,
    Panel,
    command_of,
    keep_preset,
    send_commands,
)
from chatllm.chat.replies import Replies, send_reply_actions, store_message
from chatllm.chat.services import Services
from chatllm.chat.session import (
    ChatSession,
    current_lang,
    current_session,
    set_session,
    show_error,
)
from chatllm.chat.sharing import Shares
from chatllm.chat.tasks import as_chat_task
from chatllm.chat.xray import XRay
from chatllm.config import Settings
from chatllm.errors import ChatLLMError, EngineUnavailable, describe
from chatllm.export import thread_document
from chatllm.generation import warm_up
from chatllm.i18n import t
from chatllm.markdown import to_markdown
from chatllm.memory import freeze_startup_objects
from chatllm.share import Sharing, may_view, public_page, read_only

log = logging.getLogger("chatllm")


class ChatApp:
    """The app's behaviour behind the Chainlit hooks, for one process: the chat, on the
    services built before the server started (`Services`, which loads it)."""

    def __init__(self, settings: Settings, services: Services | None = None) -> None:
        self.services = services or Services(settings)
        self.settings = settings
        self.store = self.services.store
        self.presets = self.services.presets
        self.starters = self.services.starters
        self.backends = Backends(settings)
        self.panel = Panel(self.presets, self.store)
        self.replies = Replies(self.backends, self.store)
        self.branches = Branches(self.store)
        self.xray_view = XRay(self.store)
        self.commands = Commands(self.backends, self.store, self.panel)
        self.shares = Shares(self.store, settings.sharing, settings.public_url)
        #: Why some backends were left out of the profiles a user was last offered, by
        #: user; told in that user's next chat.
        self._problems: dict[str, list[ChatLLMError]] = {}
        self._warming: asyncio.Task[None] | None = None

    async def prepare(self, host: str) -> None:
        await self.services.prepare(host)

    async def started(self) -> None:
        """As the server's start would: the database's connections opened, then `ready`."""
        await self.services.warm_store()  # this chat is loaded: no other is
        self.ready()

    def ready(self) -> None:
        """Loaded, on the server's event loop: what the app holds by now is left out of
        garbage collection, and the local model makes its first reply in the background
        (the first page does not wait for it)."""
        freeze_startup_objects()
        if self.settings.local_backend and self._warming is None:
            self._warming = asyncio.create_task(self._warm_local_model())

    async def _warm_local_model(self) -> None:
        """A reply of one token from the local model before the first user's, so the first
        question is answered as quickly as the next ones (`chatllm.generation.warm_up`).
        A user arriving meanwhile waits behind it, at most its length."""
        backend, settings = self.backends.get("local"), self.settings
        try:
            took = await warm_up(backend, settings.local_model_name, settings.system_prompt)
        except ChatLLMError as exc:  # the engine failed: said where the profile is offered
            log.warning("The local model could not make its first reply ahead: %s", exc)
        except Exception:  # the first user's reply will show what is wrong
            log.exception("The local model could not make its first reply ahead")
        else:
            log.info("The local model made its first reply ahead, in %.0f ms", took * 1000)

    # ---- chat profiles: one per backend and model

    async def profiles(self, user: cl.User | None, lang: str | None) -> list[cl.ChatProfile]:
        specs, problems = await self.backends.profiles()
        for problem in problems:
            log.warning("Models unavailable, offering the others: %s", problem)
        self._problems[_identifier(user)] = problems
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
            starters=[
                cl.Starter(
                    label=starter.text("label", lang),
                    message=starter.text("message", lang),
                    command=starter.command(lang),
                    icon=starter.icon,
                )
                for starter in self.starters.offered(spec.backend, spec.name)
            ],
        )

    async def _default_profile(self) -> ProfileSpec | None:
        """The profile a chat that names none gets: the first one offered (the profile
        menu's default), if the chat does not name one; the local model on a worker without
        it would fail every reply."""
        if cl.user_session.get("chat_profile"):
            return None
        specs, _ = await self.backends.profiles()
        return specs[0] if specs else None

    # ---- a chat

    def _session(self) -> ChatSession:
        return current_session(self.settings)

    async def start(self) -> None:
        lang = current_lang()
        session = ChatSession.new(self.settings, await self._default_profile())
        session.problems = self._problems.get(_identifier(cl.user_session.get("user")), [])
        set_session(session)
        await self.panel.send(session, lang)
        await send_commands(lang, share=self.settings.sharing is not Sharing.OFF)
        for problem in session.problems:
            if isinstance(problem, EngineUnavailable):
                text = describe(problem, lang)
            else:
                text = t("notice.endpoint_unavailable", lang, reason=describe(problem, lang))
            await cl.Message(content=text, author="chatllm").send()

    async def resume(self, thread: ThreadDict) -> None:
        """An old thread reopened: its memory, sliders and reply actions come back."""
        lang = current_lang()
        session = set_session(
            ChatSession.from_thread(thread, self.settings, await self._default_profile())
        )
        # Without this the settings button is gone after a resume.
        await self.panel.send(session, lang)
        await send_commands(lang, share=self.settings.sharing is not Sharing.OFF)
        # Chainlit sends the page this thread once this hook returns: the switchers go in it.
        with_switchers(thread, lang)
        await send_reply_actions(thread.get("steps") or [], lang, session)

    async def update_settings(self, values: dict[str, Any]) -> None:
        await self.panel.update(self._session(), values, current_lang())

    async def edit_settings(self, values: dict[str, Any]) -> None:
        """A change in the open panel, before Confirm: a chosen preset's values shown on
        the sliders at once. Run outside a task (a slider's drag sends many), so what
        fails is logged here; the panel goes on as it was."""
        try:
            await self.panel.edit(self._session(), values, current_lang())
        except Exception:
            log.exception("The panel's preview failed")

    async def answer(self, message: cl.Message) -> None:
        """A message: a command's, or one chat turn (the model's reply streamed in)."""
        session = self._session()
        if await self._too_long(session, message):
            return
        starter = self.starters.find(message.command, message.content)
        if starter is not None:  # its preset, or the presets it compares, set first
            await self.panel.apply_starter(session, starter, current_lang())
        command = command_of(message.command)
        if command == COMPARE:
            await self.commands.compare(session, message)
        elif command == EXPORT:
            await self.commands.export(message)
        elif command == IMPORT:
            await self.commands.import_thread(message)
        elif command == PRESETS:
            await self.commands.presets(message)
        elif command == BRANCHES:
            await self.commands.drop_command(message)
            await self.branches.show_map(session)
        elif command == SHARE:
            await self.commands.drop_command(message)
            await self.shares.share()
        elif await store_message(self.store, session, message):
            await self.replies.stream(
                session, session.sampling, session.history, message.content, message.id, "reply"
            )

    async def _too_long(self, session: ChatSession, message: cl.Message) -> bool:
        """A message over the limit: kept, as every message is, but not answered."""
        most = self.settings.max_message_chars
        if len(message.content) <= most:
            return False
        if await store_message(self.store, session, message):
            text = t(
                "error.message_too_long", current_lang(), length=len(message.content), most=most
            )
            await cl.ErrorMessage(content=text, author="chatllm").send()
        return True

    async def edit(self, message_id: str, text: str, author: str) -> None:
        """The pencil on a message of the user's: the edited words become a new message
        beside it (‹ n/m ›), shown where it stood and answered under the current
        settings, as the chat's task (Stop ends it). The message edited and everything
        after it stay stored, a switch away."""
        await as_chat_task(self._edit(message_id, text, author))

    async def _edit(self, message_id: str, text: str, author: str) -> None:
        session = self._session()
        lang = current_lang()
        if not text.strip():
            return  # nothing to send: the message stays as it was
        try:
            parent, history = await self.branches.before(message_id)
        except ChatLLMError as exc:
            await show_error(exc, lang)
            return
        message = cl.Message(content=text, author=author or "User", type="user_message")
        edited = replace(session, leaf=parent, history=history)
        if await self._too_long(edited, message):
            session.leaf = edited.leaf
            await self.branches.show_path(session)
            return
        if not await store_message(self.store, edited, message):
            return  # told; the tab stays where it was
        session.leaf = message.id
        await self.branches.show_path(session)  # the new message where the old one stood
        await self.replies.stream(
            session, session.sampling, session.history, text, message.id, "reply"
        )

    # ---- the buttons under a reply

    async def replay(self, action: cl.Action) -> None:
        await as_chat_task(self.replies.replay(self._session(), action))

    async def regenerate(self, action: cl.Action) -> None:
        await as_chat_task(self._regenerate(action))

    async def _regenerate(self, action: cl.Action) -> None:
        session = self._session()
        before = session.leaf
        try:
            await self.replies.regenerate(session, action)
        finally:
            # The new reply stored (a stopped one too): shown where the one it replaces
            # stood, not below it.
            if session.leaf != before:
                await self.branches.show_path(session)

    async def xray(self, action: cl.Action) -> None:
        """A reply's sampling X-ray, under it (not a task: it waits for none)."""
        await self.xray_view.show(action)

    async def fork(self, action: cl.Action) -> None:
        """A new conversation from this one's path up to a reply (not a task: it waits
        for none, and is refused while one runs)."""
        await self.branches.fork(self._session(), action)

    async def ask_to_delete_branch(self, action: cl.Action) -> None:
        await self.branches.ask_to_delete_branch(action)

    async def delete_branch(self, action: cl.Action) -> None:
        await self.branches.delete_branch(self._session(), action)

    async def switch(self, action: cl.Action) -> None:
        """‹ n/m ›: another branch of the conversation (not a task: it waits for none)."""
        await self.branches.switch(self._session(), action)

    # ---- deleting a preset of one's own (the Presets command's buttons)

    async def ask_to_delete_preset(self, action: cl.Action) -> None:
        await self.panel.ask_to_delete(action, current_lang())

    async def delete_preset(self, action: cl.Action) -> None:
        await self.panel.delete(self._session(), action, current_lang())

    async def keep_preset(self, action: cl.Action) -> None:
        await keep_preset(action)

    # ---- share links

    async def stop_sharing(self, action: cl.Action) -> None:
        await self.shares.stop(action)

    def may_view_shared(self, thread: ThreadDict, viewer: cl.User | None) -> bool:
        """Chainlit's `on_shared_thread_view`; the app's own route in front of Chainlit's
        answers share links (chatllm.web.shared_threads), with this same rule."""
        return may_view(thread, _identifier(viewer) or None, self.settings.sharing)

    async def shared_page(self, thread_id: str, lang: str) -> str:
        """The page someone not signed in gets for a share link (Sharing.ANYONE);
        LookupError if the thread is not one they may see."""
        thread = await self.store.get_thread(thread_id)
        if thread is None or not may_view(thread, None, self.settings.sharing):
            raise LookupError(thread_id)
        shared = read_only(thread)
        name = shared["name"] or t("markdown.untitled", lang)
        document = thread_document(shared)  # type: ignore[arg-type]
        document["exported_at"] = None  # shown as it is now, not exported
        text = to_markdown(document, lang)
        note = t("share.page.note", lang, name=name)
        return public_page(text, name, lang, note, self.store.files.url_root)


def _identifier(user: object) -> str:
    return str(getattr(user, "identifier", ""))
