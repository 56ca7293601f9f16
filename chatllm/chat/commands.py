"""The chat's commands: compare one message under several settings, export the thread,
import an exported one."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import chainlit as cl
from chainlit.context import local_steps

from chatllm.backends import Backends
from chatllm.chat.panel import Panel
from chatllm.chat.replies import save_message, send_and_save, store_message
from chatllm.chat.session import ChatSession, current_lang, reload_thread_list, show_error
from chatllm.compare import Column, SettingsSet, comparison_view, run_comparison
from chatllm.conversation.marks import KIND, REPLY_TO
from chatllm.errors import ChatLLMError, InvalidSampling, describe
from chatllm.export import (
    MAX_DOCUMENT_MB,
    ThreadNotFound,
    document_text,
    export_thread,
    import_thread,
)
from chatllm.generation import with_seed
from chatllm.i18n import t
from chatllm.markdown import to_markdown
from chatllm.presets import MAX_SETS
from chatllm.store import ChatDataLayer

log = logging.getLogger("chatllm")

COMPARE_REFRESH_SECONDS = 0.3


class Commands:
    def __init__(self, backends: Backends, store: ChatDataLayer, panel: Panel) -> None:
        self.backends = backends
        self.store = store
        self.panel = panel

    async def compare(self, session: ChatSession, message: cl.Message) -> None:
        """Run `message` under the current settings and the presets chosen under "Compare
        with", on the current model, and show the replies side by side."""
        lang = current_lang()
        sampling = with_seed(session.sampling)
        presets = {p.key: p for p in await self.panel.available(lang)}
        chosen = [presets[k] for k in session.compare_with if k in presets]
        if not chosen:
            await cl.ErrorMessage(content=t("compare.none", lang), author="chatllm").send()
            return
        if not await store_message(self.store, session, message):
            return
        # One seed for every column, so the settings are all that differs.
        sets = [SettingsSet(t("compare.current", lang), sampling)]
        for preset in chosen[: MAX_SETS - 1]:
            try:
                sets.append(SettingsSet(preset.label, preset.apply(sampling)))
            except InvalidSampling as exc:
                await show_error(exc, lang)
                return
        spec = session.profile
        try:
            backend = self.backends.get(spec.backend)
        except ChatLLMError as exc:
            await show_error(exc, lang)
            return
        view = cl.CustomElement(
            name="Compare",
            props=comparison_view(message.content, [], lang, done=False),
            display="inline",
        )
        header = t("compare.header", lang, count=len(sets), model=spec.model, seed=sampling.seed)
        holder = cl.Message(content=header, author="chatllm")
        await holder.send()
        await view.send(for_id=holder.id, persist=False)
        last_update = 0.0
        columns: list[Column] = []

        async def progress(current: list[Column]) -> None:
            nonlocal last_update, columns
            columns = current
            if not any(c.begun for c in current):
                return  # the columns before any text, kept for a Stop; the view shows them
            now = time.monotonic()
            if now - last_update >= COMPARE_REFRESH_SECONDS:
                last_update = now
                view.props = comparison_view(
                    message.content, [c.as_dict() for c in current], lang, done=False
                )
                await view.send(for_id=holder.id, persist=False)

        try:
            columns = await run_comparison(
                backend,
                spec.model,
                sets,
                session.history,
                message.content,
                parallel=spec.backend != "local",
                progress=progress,
                describe=lambda exc: describe(exc, lang),
            )
        finally:
            replies = [c.as_dict() for c in columns]
            view.props = comparison_view(message.content, replies, lang, done=True)
            holder.metadata = {
                KIND: "compare",
                REPLY_TO: message.id,
                "compare": {"prompt": message.content, "replies": replies},
            }
            await holder.update()
            await save_message(self.store, holder, view)

    async def drop_command(self, message: cl.Message, keep_shown: bool = False) -> None:
        """A command's own message is not part of the conversation: it leaves the store
        and, unless `keep_shown`, the chat. What the command shows next is then shown at
        the top level: Chainlit would nest it under this task's run step, itself under the
        removed message, and the page, which removes a message with everything under it,
        would show none of it. A command that asks for a file keeps its message shown:
        Chainlit's question must have a parent step (its upload is matched to the
        question by the parent's id)."""
        if not keep_shown:
            local_steps.set([])
            await message.remove()
        try:
            await self.store.delete_step(message.id)
        except ChatLLMError:
            log.warning("Could not remove the command message %s", message.id, exc_info=True)

    async def presets(self, message: cl.Message) -> None:
        """The user's own presets, each with a button that deletes it once confirmed."""
        await self.drop_command(message)
        await self.panel.list_own(current_lang())

    async def export(self, message: cl.Message) -> None:
        """This thread as Markdown and JSON files to download (receipts included)."""
        lang = current_lang()
        await self.drop_command(message)
        try:
            document = await export_thread(self.store, cl.context.session.thread_id)
        except ThreadNotFound:  # a chat with no message yet has no thread
            await cl.ErrorMessage(content=t("export.empty", lang), author="chatllm").send()
            return
        except ChatLLMError as exc:
            await show_error(exc, lang)
            return
        name = _file_stem(document)
        files = [
            cl.File(
                name=f"{name}.md",
                content=to_markdown(document, lang).encode("utf-8"),
                mime="text/markdown",
                display="inline",
            ),
            cl.File(
                name=f"{name}.json",
                content=json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8"),
                mime="application/json",
                display="inline",
            ),
        ]
        ready = cl.Message(
            content=t("export.ready", lang), author="chatllm", metadata={KIND: "export"}
        )
        await send_and_save(self.store, ready, *files)

    async def import_thread(self, message: cl.Message) -> None:
        """Ask for an exported JSON file and add it as a new thread."""
        lang = current_lang()
        await self.drop_command(message, keep_shown=True)
        ask = cl.AskFileMessage(
            content=t("import.ask", lang),
            accept={"application/json": [".json"]},
            max_size_mb=MAX_DOCUMENT_MB,
            timeout=600,
            author="chatllm",
        )
        ask.metadata = {KIND: "import"}  # the author's session's, not the conversation's
        files = await ask.send()
        if not files:
            return
        user = cl.user_session.get("user")
        try:
            data = await asyncio.to_thread(Path(files[0].path).read_bytes)
            raw = document_text(data, files[0].name)
            try:
                document = json.loads(raw)
            except ValueError as exc:
                raise ChatLLMError(t("import.not_json", lang, detail=exc)) from exc
            thread_id = await import_thread(self.store, document, user.identifier, lang)
        except (ChatLLMError, OSError) as exc:
            await show_error(exc, lang)
            return
        await cl.Message(
            content=t("import.done", lang, url=f"{self.store.files.url_root}/thread/{thread_id}"),
            author="chatllm",
            metadata={KIND: "import"},
        ).send()
        await reload_thread_list(thread_id)


def _file_stem(document: dict[str, Any]) -> str:
    name = str((document.get("thread") or {}).get("name") or "chat")
    stem = re.sub(r"[^\w\-]+", "-", name, flags=re.UNICODE).strip("-")[:60]
    return f"chatllm-{stem or 'chat'}"
