"""What each Chainlit hook does. `app.py` only wires these methods to the decorators."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any

import chainlit as cl
from chainlit.context import ChainlitContextException
from chainlit.element import Element
from chainlit.input_widget import InputWidget, MultiSelect, Select, Switch, TextInput
from chainlit.step import StepDict
from chainlit.types import ThreadDict
from chainlit.user import PersistedUser
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from pydantic import ValidationError

from chatllm.auth import LOCAL_USER, AuthMode, Passwords, decide_mode, ensure_auth_secret
from chatllm.backends import Backends, ProfileSpec, queue_listener
from chatllm.backends.local import start_local_engine
from chatllm.compare import MAX_SETS, Column, SettingsSet, comparison_view, run_comparison
from chatllm.config import Settings, get_settings
from chatllm.errors import (
    ChatLLMError,
    ConfigError,
    EngineUnavailable,
    InvalidSampling,
    describe,
)
from chatllm.generation import Generation, with_seed
from chatllm.history import (
    CHOSEN_REPLIES,
    KIND,
    REPLY_TO,
    history_from_steps,
    replies_by_message,
    reply_metadata,
)
from chatllm.i18n import one_line, t
from chatllm.presets import Preset, PresetError, Presets
from chatllm.receipts import Receipt, receipt_of
from chatllm.sampling import Sampling
from chatllm.store import ChatDataLayer, Database, FileStore, StoreError, migrated
from chatllm.store.users import Users
from chatllm.transfer import export_thread, to_markdown
from chatllm.transfer import import_thread as import_document

log = logging.getLogger("chatllm")

# Live state, kept out of thread metadata (see chatllm.store.datalayer.SESSION_ONLY_PREFIX).
SAMPLING = "chatllm.sampling"
HISTORY = "chatllm.history"
CHOSEN = "chatllm.chosen"  # {user message id: the reply the conversation continues from}
PRESET = "chatllm.preset"  # the preset the sliders were last set from, or CUSTOM
COMPARE_WITH = "chatllm.compare_with"  # preset keys a comparison runs beside the sliders

CUSTOM = "custom"
DEFAULT_COMPARE_WITH = ("builtin:code", "builtin:creative")
COMMAND_COMPARE = "Compare"
COMMAND_EXPORT = "Export"
COMMAND_IMPORT = "Import"
COMPARE_REFRESH_SECONDS = 0.3
IMPORT_MAX_MB = 50


def language() -> str:
    """The browser's language for this session (HTTP contexts have none)."""
    try:
        session = cl.context.session
    except ChainlitContextException:
        return "en"
    return getattr(session, "language", None) or "en"


async def show_error(exc: BaseException, lang: str) -> None:
    """`exc` in plain words, as an error message in the chat."""
    await cl.ErrorMessage(content=describe(exc, lang), author="chatllm").send()


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
        self.presets = Presets(self.store.db)
        self._unavailable: list[ChatLLMError] = []

    @classmethod
    def from_environment(cls, host: str) -> ChatApp:
        """Build from the environment for serving on `host`; a configuration that cannot
        work ends the process with a message saying what to change."""
        try:
            app = cls(_settings_or_config_error())
            # Loaded and checked now: a file that is no model stops start-up; an engine that
            # fails its self-check leaves the local profile out, the endpoint's still offered.
            failure = start_local_engine(app.settings)
            if failure is not None:
                log.error("%s", failure)
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
        async with migrated(self.settings.database) as database:
            users = await Users(database, self.store.files).with_passwords()
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
            log.warning("Models unavailable, offering the others: %s", problem)
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

    async def _presets(self, lang: str) -> list[Preset]:
        return await self.presets.for_user(_user_id(), lang)

    async def _send_settings(self, sampling: Sampling, lang: str) -> None:
        """The settings panel: preset, comparison sets, saving a preset, then the sliders."""
        presets = await self._presets(lang)
        keys = {p.key for p in presets}
        chosen = cl.user_session.get(PRESET) or CUSTOM
        compare_with = [k for k in cl.user_session.get(COMPARE_WITH) or [] if k in keys]
        widgets: list[InputWidget] = [
            Select(
                id="preset",
                label=t("preset", lang),
                items={t("preset.custom", lang): CUSTOM, **{p.label: p.key for p in presets}},
                initial_value=chosen if chosen in keys else CUSTOM,
                tooltip=t("preset.help", lang),
            ),
            TextInput(
                id="save_preset",
                label=t("preset.save", lang),
                initial="",
                placeholder=t("preset.save.placeholder", lang),
                tooltip=t("preset.save.help", lang),
            ),
            Switch(
                id="delete_preset",
                label=t("preset.delete", lang),
                initial=False,
                tooltip=t("preset.delete.help", lang),
            ),
            MultiSelect(
                id="compare_with",
                label=t("compare_with", lang),
                items={p.label: p.key for p in presets},
                initial=compare_with,
                tooltip=t("compare_with.help", lang),
            ),
            *sampling.widgets(lang),
        ]
        await cl.ChatSettings(widgets).send()

    async def _send_commands(self, lang: str) -> None:
        await cl.context.emitter.set_commands(
            [
                {
                    "id": COMMAND_COMPARE,
                    "icon": "columns-3",
                    "description": t("command.compare", lang),
                    "button": True,
                    "persistent": False,
                    "selected": False,
                },
                {
                    "id": COMMAND_EXPORT,
                    "icon": "download",
                    "description": t("command.export", lang),
                    "button": False,
                    "persistent": False,
                    "selected": False,
                },
                {
                    "id": COMMAND_IMPORT,
                    "icon": "upload",
                    "description": t("command.import", lang),
                    "button": False,
                    "persistent": False,
                    "selected": False,
                },
            ]
        )

    async def start(self) -> None:
        lang = language()
        sampling = self._default_sampling()
        cl.user_session.set(SAMPLING, sampling)
        cl.user_session.set(HISTORY, [])
        cl.user_session.set(CHOSEN, {})
        cl.user_session.set(PRESET, CUSTOM)
        cl.user_session.set(COMPARE_WITH, list(DEFAULT_COMPARE_WITH))
        await self._send_settings(sampling, lang)
        await self._send_commands(lang)
        for problem in self._unavailable:
            if isinstance(problem, EngineUnavailable):
                text = describe(problem, lang)
            else:
                text = t("notice.endpoint_unavailable", lang, reason=describe(problem, lang))
            await cl.Message(content=text, author="chatllm").send()

    async def resume(self, thread: ThreadDict) -> None:
        """An old thread reopened: its memory, sliders and reply actions come back."""
        lang = language()
        metadata = thread.get("metadata") or {}
        saved = dict(metadata.get("chat_settings") or {})
        sampling = self._default_sampling().restore(
            {k: v for k, v in saved.items() if k in Sampling.model_fields}
        )
        chosen = dict(metadata.get(CHOSEN_REPLIES) or {})
        steps = thread.get("steps") or []
        cl.user_session.set(SAMPLING, sampling)
        cl.user_session.set(CHOSEN, chosen)
        cl.user_session.set(HISTORY, history_from_steps(steps, chosen))
        cl.user_session.set(PRESET, saved.get("preset") or CUSTOM)
        compare_with = saved.get("compare_with")
        cl.user_session.set(
            COMPARE_WITH, list(compare_with) if isinstance(compare_with, list) else []
        )
        # Without this the settings button is gone after a resume.
        await self._send_settings(sampling, lang)
        await self._send_commands(lang)
        # Chainlit does not store actions; each reply gets its buttons again.
        _, replies = replies_by_message(steps)
        for variants in replies.values():
            for step in variants:
                for action in reply_actions(step["id"], len(variants) > 1, lang):
                    await action.send(for_id=step["id"])

    async def update_settings(self, values: dict[str, Any]) -> None:
        """Apply the panel: a newly chosen preset sets the sliders, a name saves the current
        values as a preset, and slider changes apply to the next reply. Bad values are
        refused and the old ones kept."""
        lang = language()
        current: Sampling = cl.user_session.get(SAMPLING) or self._default_sampling()
        values = dict(values)
        preset_key = str(values.pop("preset", None) or CUSTOM)
        save_as = str(values.pop("save_preset", None) or "").strip()
        compare_with = values.pop("compare_with", None)
        delete = values.pop("delete_preset", None) is True
        previous_key = cl.user_session.get(PRESET) or CUSTOM
        presets = {p.key: p for p in await self._presets(lang)}
        notices: list[str] = []
        try:
            updated = current.update(
                {k: v for k, v in values.items() if k in Sampling.model_fields}
            )
            if preset_key != previous_key and preset_key in presets:
                updated = presets[preset_key].apply(updated)
            elif preset_key in presets and not presets[preset_key].matches(updated):
                preset_key = CUSTOM  # a slider moved away from the preset
            if delete and preset_key.startswith("user:"):
                user_id = _user_id()
                name = presets[preset_key].label if preset_key in presets else ""
                if user_id is not None and await self.presets.delete(user_id, name):
                    notices.append(t("preset.deleted", lang, name=name))
                presets.pop(preset_key, None)
                preset_key = CUSTOM
            if save_as:
                user_id = _user_id()
                if user_id is None:
                    raise PresetError("saving presets needs a signed-in user")
                saved = await self.presets.save(user_id, save_as, updated)
                preset_key = saved.key
                notices.append(t("preset.saved", lang, name=saved.label))
            if isinstance(compare_with, list):
                compare_with = [str(k) for k in compare_with if str(k) in presets]
                if len(compare_with) > MAX_SETS - 1:
                    raise PresetError(
                        t(
                            "compare_with.too_many",
                            lang,
                            most=MAX_SETS - 1,
                            chosen=len(compare_with),
                        )
                    )
                cl.user_session.set(COMPARE_WITH, compare_with)
        except ChatLLMError as exc:  # bad values, a bad preset name, a failed save
            log.info("Refused settings: %s", exc)
            await self._send_settings(current, lang)  # the panel shows the old values
            await show_error(exc, lang)
            return
        cl.user_session.set(SAMPLING, updated)
        cl.user_session.set(PRESET, preset_key)
        if preset_key != previous_key or save_as or delete or updated != current:
            await self._send_settings(updated, lang)  # the sliders show what will be used
        for notice in notices:
            await cl.context.emitter.send_toast(notice, "success")
        if cl.context.session.has_first_interaction:  # else the thread does not exist yet
            try:
                await self._save_thread_settings(updated)
            except ChatLLMError as exc:
                await show_error(exc, lang)

    async def _save_thread_settings(self, sampling: Sampling) -> None:
        """Store the sliders and profile with the thread now, not only on disconnect."""
        await self._save_thread_metadata(
            {
                "chat_settings": {
                    **sampling.as_settings(),
                    "preset": cl.user_session.get(PRESET) or CUSTOM,
                    "compare_with": list(cl.user_session.get(COMPARE_WITH) or []),
                },
                "chat_profile": self._current_profile().name,
            }
        )

    async def _save_thread_metadata(self, metadata: dict[str, Any]) -> None:
        try:
            await self.store.update_thread(cl.context.session.thread_id, metadata=metadata)
        except ChatLLMError:
            raise
        except Exception as exc:
            raise StoreError(f"the settings could not be saved ({exc})") from exc

    async def _store_message(self, message: cl.Message) -> bool:
        """The user's words safe on disk before the model runs; False (and the user told)
        if they could not be saved."""
        sampling: Sampling = cl.user_session.get(SAMPLING) or self._default_sampling()
        try:
            await self.store.save_step(message.to_dict())
            await self._save_thread_settings(sampling)
        except ChatLLMError as exc:
            await show_error(exc, language())
            return False
        return True

    async def answer(self, message: cl.Message) -> None:
        """One chat turn: stream the model's reply to `message` into the chat."""
        if message.command == COMMAND_COMPARE:
            await self.compare(message)
            return
        if message.command == COMMAND_EXPORT:
            await self.export(message)
            return
        if message.command == COMMAND_IMPORT:
            await self.import_thread(message)
            return
        sampling: Sampling = cl.user_session.get(SAMPLING) or self._default_sampling()
        history: list[BaseMessage] = cl.user_session.get(HISTORY) or []
        cl.user_session.set(HISTORY, history)
        if not await self._store_message(message):
            return
        kept: list[cl.Message] = []
        try:
            await self._generate(
                self._current_profile(),
                sampling,
                history,
                message.content,
                message.id,
                "reply",
                kept=kept,
            )
        finally:  # a stopped reply is remembered too, as far as it got
            for reply in kept:
                history.extend([HumanMessage(message.content), AIMessage(reply.content)])

    async def _generate(
        self,
        spec: ProfileSpec,
        sampling: Sampling,
        history: Sequence[BaseMessage],
        text: str,
        reply_to: str,
        kind: str,
        *,
        title: str | None = None,
        variants: int = 1,
        kept: list[cl.Message] | None = None,
    ) -> cl.Message | None:
        """Stream one reply into the chat and store it with its receipt; the stored reply,
        or None if nothing was written (the error has been shown). A reply that was stopped
        is stored and added to `kept` before the cancellation goes on."""
        lang = language()
        reply = cl.Message(content="")
        notice = QueueNotice(lang)
        listening = queue_listener.set(notice.show)
        generation: Generation | None = None
        try:
            generation = Generation(self.backends.get(spec.backend), spec.model, sampling)
            # Closed at once on Stop (the task is cancelled while it sends a token): the
            # model stops, and the reply's receipt says it was cancelled.
            async with aclosing(generation.stream(history, text)) as tokens:
                async for token in tokens:
                    await reply.stream_token(token)
        except ChatLLMError as exc:
            await show_error(exc, lang)
        except Exception as exc:
            log.exception("Reply failed")
            await show_error(exc, lang)
        finally:
            queue_listener.reset(listening)
            await notice.clear()
            if generation is not None and reply.content:
                # Whatever was written is kept, even of a stopped or failed reply.
                receipt = generation.receipt()
                reply.metadata = reply_metadata(receipt, reply_to, kind)
                reply.actions = reply_actions(reply.id, variants > 1, lang)
                await reply.send()
                await self._save(reply, receipt_element(receipt, lang, title))
                if kept is not None:
                    kept.append(reply)
        return reply if reply.content else None

    # ---- reply actions: replay, regenerate, continue from a variant

    async def _thread_steps(self) -> list[StepDict]:
        thread = await self.store.get_thread(cl.context.session.thread_id)
        if thread is None:
            raise ChatLLMError("this conversation is not saved yet")
        return list(thread.get("steps") or [])

    async def _find_reply(
        self, step_id: str
    ) -> tuple[list[StepDict], StepDict, StepDict, dict[str, list[StepDict]]]:
        """The thread's steps, a reply, the user message it answers, and all replies."""
        steps = await self._thread_steps()
        messages, replies = replies_by_message(steps)
        for message in messages:
            for step in replies.get(message["id"], []):
                if step["id"] == step_id:
                    return steps, step, message, replies
        raise ChatLLMError("that reply is no longer in this conversation")

    async def replay(self, action: cl.Action) -> None:
        """Re-run a reply with its recorded seed, settings, model and history, and say
        whether the text came out the same."""
        lang = language()
        try:
            steps, target, message, _ = await self._find_reply(str(action.payload.get("step")))
            receipt = receipt_of(target.get("metadata"))
            if receipt is None:
                raise ChatLLMError(t("replay.no_receipt", lang))
            try:
                sampling = Sampling.model_validate(receipt.sampling)
            except ValueError as exc:
                raise ChatLLMError(t("replay.no_receipt", lang)) from exc
            chosen = cl.user_session.get(CHOSEN) or {}
            history = history_from_steps(steps, chosen, before=message["id"])
        except ChatLLMError as exc:
            await show_error(exc, lang)
            return
        try:
            backend = self.backends.get(receipt.backend)
        except ChatLLMError as exc:
            await show_error(exc, lang)
            return
        generation = Generation(backend, receipt.model, sampling)
        progress = cl.Message(
            content=t("replay.running", lang, seed=sampling.seed), author="chatllm"
        )
        await progress.send()
        try:
            await generation.run(history, message.get("output") or "")
        except ChatLLMError as exc:
            await progress.remove()
            await show_error(exc, lang)
            return
        await progress.remove()
        again = generation.receipt()
        original = target.get("output") or ""
        same = generation.text == original
        verdict = t("replay.same" if same else "replay.differs", lang, seed=sampling.seed)
        if again.prompt_digest != receipt.prompt_digest:
            verdict += " " + t("replay.prompt_changed", lang)
        elements: list[Element] = [receipt_element(again, lang, None)]
        if not same:
            view = comparison_view(
                message.get("output") or "",
                [
                    {
                        "label": t("replay.original", lang),
                        "text": original,
                        "receipt": receipt.model_dump(),
                    },
                    {
                        "label": t("replay.replayed", lang),
                        "text": generation.text,
                        "receipt": again.model_dump(),
                    },
                ],
                lang,
            )
            elements.append(cl.CustomElement(name="Compare", props=view, display="inline"))
        result = cl.Message(
            content=f"**{verdict}**\n\n{generation.text}",
            author="chatllm",
            metadata={
                **reply_metadata(again, message["id"], "replay"),
                "replay_of": target["id"],
                "identical": same,
            },
        )
        await result.send()
        await self._save(result, *elements)

    async def regenerate(self, action: cl.Action) -> None:
        """Answer a message again with the current settings; the earlier replies stay and
        the conversation continues from the new one (another can be chosen)."""
        lang = language()
        try:
            steps, _, message, replies = await self._find_reply(str(action.payload.get("step")))
        except ChatLLMError as exc:
            await show_error(exc, lang)
            return
        chosen: dict[str, str] = dict(cl.user_session.get(CHOSEN) or {})
        history = history_from_steps(steps, chosen, before=message["id"])
        sampling: Sampling = cl.user_session.get(SAMPLING) or self._default_sampling()
        earlier = replies.get(message["id"], [])
        number = len(earlier) + 1
        title = t(
            "variant.title", lang, number=number, prompt=one_line(message.get("output") or "", 40)
        )
        reply = await self._generate(
            self._current_profile(),
            sampling,
            history,
            message.get("output") or "",
            message["id"],
            "variant",
            title=title,
            variants=number,
        )
        if reply is None:
            return
        if number == 2:  # the first reply gets its "continue from this" button now
            await reply_action("choose", earlier[0]["id"], lang).send(for_id=earlier[0]["id"])
        await self._choose(message["id"], reply.id)

    async def choose(self, action: cl.Action) -> None:
        """Continue the conversation from this reply (one of a message's variants)."""
        lang = language()
        try:
            _, target, message, _ = await self._find_reply(str(action.payload.get("step")))
            await self._choose(message["id"], target["id"])
        except ChatLLMError as exc:
            await show_error(exc, lang)
            return
        await cl.context.emitter.send_toast(t("variant.chosen", lang), "success")

    async def _choose(self, message_id: str, reply_id: str) -> None:
        chosen: dict[str, str] = dict(cl.user_session.get(CHOSEN) or {})
        chosen[message_id] = reply_id
        await self._save_thread_metadata({CHOSEN_REPLIES: chosen})
        cl.user_session.set(CHOSEN, chosen)
        cl.user_session.set(HISTORY, history_from_steps(await self._thread_steps(), chosen))

    async def _save(self, message: cl.Message, *elements: Element) -> None:
        """Store a sent message and show `elements` under it, awaiting every write (the
        elements are sent unpersisted: Chainlit's own writes are unawaited tasks)."""
        try:
            await self.store.save_step(message.to_dict())
            for element in elements:
                await element.send(for_id=message.id, persist=False)
                await self.store.create_element(element)
        except ChatLLMError as exc:
            await show_error(exc, language())

    # ---- compare: one message under several settings

    async def compare(self, message: cl.Message) -> None:
        """Run `message` under the current settings and the presets chosen under "Compare
        with", on the current model, and show the replies side by side."""
        lang = language()
        sampling = with_seed(cl.user_session.get(SAMPLING) or self._default_sampling())
        presets = {p.key: p for p in await self._presets(lang)}
        chosen = [presets[k] for k in cl.user_session.get(COMPARE_WITH) or [] if k in presets]
        if not chosen:
            await cl.ErrorMessage(content=t("compare.none", lang), author="chatllm").send()
            return
        history: list[BaseMessage] = cl.user_session.get(HISTORY) or []
        if not await self._store_message(message):
            return
        # One seed for every column, so the settings are all that differs.
        sets = [SettingsSet(t("compare.current", lang), sampling)]
        for preset in chosen[: MAX_SETS - 1]:
            try:
                sets.append(SettingsSet(preset.label, preset.apply(sampling)))
            except InvalidSampling as exc:
                await show_error(exc, lang)
                return
        spec = self._current_profile()
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
                history,
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
            await self._save(holder, view)

    # ---- export and import

    async def _drop_command(self, message: cl.Message) -> None:
        """A command's own message is not part of the conversation."""
        await message.remove()
        try:
            await self.store.delete_step(message.id)
        except ChatLLMError:
            log.warning("Could not remove the command message %s", message.id, exc_info=True)

    async def export(self, message: cl.Message) -> None:
        """This thread as Markdown and JSON files to download (receipts included)."""
        lang = language()
        await self._drop_command(message)
        try:
            document = await export_thread(self.store, cl.context.session.thread_id)
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
        await ready.send()
        await self._save(ready, *files)

    async def import_thread(self, message: cl.Message) -> None:
        """Ask for an exported JSON file and add it as a new thread."""
        lang = language()
        await self._drop_command(message)
        files = await cl.AskFileMessage(
            content=t("import.ask", lang),
            accept={"application/json": [".json"]},
            max_size_mb=IMPORT_MAX_MB,
            timeout=600,
            author="chatllm",
        ).send()
        if not files:
            return
        user = cl.user_session.get("user")
        try:
            raw = await asyncio.to_thread(Path(files[0].path).read_text, "utf-8")
            try:
                document = json.loads(raw)
            except ValueError as exc:
                raise ChatLLMError(t("import.not_json", lang, detail=exc)) from exc
            thread_id = await import_document(self.store, document, user.identifier)
        except (ChatLLMError, OSError, UnicodeDecodeError) as exc:
            await show_error(exc, lang)
            return
        await cl.Message(
            content=t("import.done", lang, url=f"/thread/{thread_id}"), author="chatllm"
        ).send()


def _user_id() -> str | None:
    user = cl.user_session.get("user")
    return getattr(user, "id", None) if isinstance(user, PersistedUser) else None


def _file_stem(document: dict[str, Any]) -> str:
    name = str((document.get("thread") or {}).get("name") or "chat")
    stem = re.sub(r"[^\w\-]+", "-", name, flags=re.UNICODE).strip("-")[:60]
    return f"chatllm-{stem or 'chat'}"


def receipt_element(receipt: Receipt, lang: str, title: str | None) -> cl.CustomElement:
    return cl.CustomElement(name="Receipt", props=receipt.view(lang, title), display="inline")


#: The buttons under a reply, by action name, with their icons (lucide names).
REPLY_ACTIONS = {"replay": "repeat", "regenerate": "refresh-cw", "choose": "check"}


def reply_action(name: str, step_id: str, lang: str) -> cl.Action:
    return cl.Action(
        name=name,
        payload={"step": step_id},
        label=t(f"action.{name}", lang),
        tooltip=t(f"action.{name}.help", lang),
        icon=REPLY_ACTIONS[name],
    )


def reply_actions(step_id: str, variants: bool, lang: str) -> list[cl.Action]:
    """The buttons under a reply: replay it, regenerate it, and (once its message has
    several replies) continue the conversation from it."""
    names = ["replay", "regenerate", *(["choose"] if variants else [])]
    return [reply_action(name, step_id, lang) for name in names]
