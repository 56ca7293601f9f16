"""The settings panel (the sliders first; presets and comparison sets on a tab of their own),
deleting a preset, and the chat's commands."""

from __future__ import annotations

import logging
from typing import Any

import chainlit as cl
from chainlit.input_widget import InputWidget, MultiSelect, Select, Slider, Tab, TextInput

from chatllm.chat.actions import DELETE_PRESET, DELETE_PRESET_CONFIRMED, KEEP_PRESET
from chatllm.chat.session import CUSTOM, ChatSession, save_session, user_id
from chatllm.errors import (
    ChatLLMError,
    PresetError,
    PresetNameNotText,
    PresetsNeedUser,
    describe,
)
from chatllm.i18n import CATALOGUES, t
from chatllm.presets import MAX_SETS, Preset, Presets, builtin_presets
from chatllm.sampling import ADVANCED, Sampling
from chatllm.starters import Starter
from chatllm.store import ChatDataLayer

log = logging.getLogger("chatllm")

COMPARE = "Compare"
EXPORT = "Export"
IMPORT = "Import"
PRESETS = "Presets"
SHARE = "Share"
BRANCHES = "Branches"
#: The chat's commands: id, icon (a lucide name), shown as a button beside the input.
COMMANDS = (
    (COMPARE, "columns-3", True),
    (EXPORT, "download", False),
    (IMPORT, "upload", False),
    (PRESETS, "bookmark-x", False),
    (BRANCHES, "git-branch", False),
    (SHARE, "share-2", True),
)
#: The panel's tabs: the sliders first, where a presenter looks; the samplers a tester
#: reaches for (typical_p, the OpenAI penalties, mirostat) next; presets apart.
SAMPLING_TAB = "sampling"
ADVANCED_TAB = "advanced"
PRESETS_TAB = "presets"


def sampling_widgets(sampling: Sampling, lang: str | None = None) -> list[InputWidget]:
    """A widget for each sampling value, showing `sampling`'s."""
    widgets: list[InputWidget] = []
    for name in Sampling.model_fields:
        label = t(name, lang)
        tooltip = t(f"{name}.help", lang)
        value = getattr(sampling, name)
        if name == "seed":
            widgets.append(
                TextInput(
                    id=name,
                    label=label,
                    initial="" if value is None else str(value),
                    placeholder=t("seed.placeholder", lang),
                    tooltip=tooltip,
                )
            )
        elif name == "system_prompt":
            widgets.append(
                TextInput(id=name, label=label, initial=value, multiline=True, tooltip=tooltip)
            )
        else:
            low, high, step = Sampling.slider(name)
            widgets.append(
                Slider(
                    id=name,
                    label=label,
                    initial=value,
                    min=low,
                    max=high,
                    step=step,
                    tooltip=tooltip,
                )
            )
    return widgets


def command_name(command: str, lang: str) -> str:
    """A command's name in the user's language: Chainlit shows a command's id itself, on
    its button and in the command menu."""
    return t(f"command.{command.lower()}.name", lang)


def command_of(name: str | None) -> str | None:
    """The command a message names, in whichever language its chat showed it."""
    for command, _, _ in COMMANDS:
        if name == command or name in {command_name(command, lang) for lang in CATALOGUES}:
            return command
    return None


async def send_commands(lang: str, share: bool = True) -> None:
    """The commands beside the input; Share only where threads can be shared."""
    await cl.context.emitter.set_commands(
        [
            {
                "id": command_name(command, lang),
                "icon": icon,
                "description": t(f"command.{command.lower()}", lang),
                "button": button,
                "persistent": False,
                "selected": False,
            }
            for command, icon, button in COMMANDS
            if share or command != SHARE
        ]
    )


class Panel:
    """The settings panel of each chat: what it shows, and what a change to it does."""

    def __init__(self, presets: Presets, store: ChatDataLayer) -> None:
        self.presets = presets
        self.store = store

    async def available(self, lang: str) -> list[Preset]:
        """The built-in presets and the signed-in user's own."""
        return await self.presets.for_user(user_id(), lang)

    async def send(self, session: ChatSession, lang: str) -> None:
        """Show the panel: the sliders on its first tab; the preset, saving one and the
        comparison sets on the second."""
        presets = await self.available(lang)
        session.preset = preset_of(session.sampling, presets, session.preset)
        tabs = self._tabs(
            sampling_widgets(session.sampling, lang),
            presets,
            lang,
            preset=session.preset,
            compare_with=session.compare_with,
        )
        settings = cl.ChatSettings(tabs)
        await settings.send()
        session.panel_sent = session.panel_shown = settings.settings()
        _mirror(session)

    def _tabs(
        self,
        sliders: list[InputWidget],
        presets: list[Preset],
        lang: str,
        *,
        preset: str,
        compare_with: list[str],
        save_as: str = "",
    ) -> list[InputWidget] | list[Tab]:
        keys = {p.key for p in presets}
        preset_widgets: list[InputWidget] = [
            Select(
                id="preset",
                label=t("preset", lang),
                items={t("preset.custom", lang): CUSTOM, **{p.label: p.key for p in presets}},
                initial_value=preset,
                tooltip=t("preset.help", lang),
            ),
            TextInput(
                id="save_preset",
                label=t("preset.save", lang),
                initial=save_as,
                placeholder=t("preset.save.placeholder", lang),
                tooltip=t("preset.save.help", lang),
            ),
            MultiSelect(
                id="compare_with",
                label=t("compare_with", lang),
                items={p.label: p.key for p in presets},
                initial=[k for k in compare_with if k in keys],
                tooltip=t("compare_with.help", lang),
            ),
        ]
        return [
            Tab(
                id=SAMPLING_TAB,
                label=t("panel.sampling", lang),
                inputs=[w for w in sliders if w.id not in ADVANCED],
            ),
            Tab(
                id=ADVANCED_TAB,
                label=t("panel.advanced", lang),
                inputs=[w for w in sliders if w.id in ADVANCED],
            ),
            Tab(id=PRESETS_TAB, label=t("panel.presets", lang), inputs=preset_widgets),
        ]

    async def edit(self, session: ChatSession, values: dict[str, Any], lang: str) -> None:
        """A value changed in the open panel, before Confirm (Chainlit's page sends every
        value at each change). Choosing a preset moves the sliders at once, so the person
        sees what it sets before confirming; a slider moved after that is theirs, and
        Confirm keeps it. Nothing is applied or stored here: Cancel still restores the
        values the panel opened with, in the page."""
        shown, sent = session.panel_shown, session.panel_sent
        session.panel_shown = dict(values)
        key = values.get("preset")
        if not isinstance(key, str) or key == CUSTOM:
            return
        # What the page showed before this change: the panel's last known state, or, after
        # a Cancel (which the page does not tell), the values it was last sent. A change
        # that leaves every other field as one of them is a choice of preset; one with
        # anything else in it is a slider's or a text's.
        before = next(
            (
                state
                for state in (shown, sent)
                if all(v == state.get(k) for k, v in values.items() if k != "preset")
            ),
            None,
        )
        if before is None or key == before.get("preset"):
            return
        presets = {p.key: p for p in await self.available(lang)}
        chosen = presets.get(key)
        if chosen is None:
            return
        sliders = sampling_widgets(chosen.apply(session.sampling), lang)
        for widget in sliders:  # the rest as the person left them, even text not yet valid
            if widget.id not in chosen.values and widget.id in values:
                widget.initial = values[widget.id]
        compare_with = values.get("compare_with")
        tabs = self._tabs(
            sliders,
            list(presets.values()),
            lang,
            preset=key,
            compare_with=[str(k) for k in compare_with]
            if isinstance(compare_with, list)
            else session.compare_with,
            save_as=str(values.get("save_preset") or ""),
        )
        settings = cl.ChatSettings(tabs)
        await settings.refresh()  # the page's panel, not Chainlit's copy of its values
        session.panel_shown = settings.settings()

    async def update(self, session: ChatSession, values: dict[str, Any], lang: str) -> None:
        """Apply the panel: a newly chosen preset sets the sliders (but those moved in the
        same edit), a name saves the current values as a preset, and slider changes apply
        to the next reply. Bad values are refused and the old ones kept."""
        current = session.sampling
        values = dict(values)
        preset_key = str(values.pop("preset", None) or CUSTOM)
        name = values.pop("save_preset", None)
        compare_with = values.pop("compare_with", None)
        previous_key = session.preset
        presets = {p.key: p for p in await self.available(lang)}
        notices: list[str] = []
        save_as = ""
        try:
            if name is not None and not isinstance(name, str):
                raise PresetNameNotText()
            save_as = (name or "").strip()
            updated = current.update(
                {k: v for k, v in values.items() if k in Sampling.model_fields}
            )
            chosen = presets.get(preset_key) if preset_key != previous_key else None
            if chosen is not None:
                # Chainlit's panel sends nothing until Confirm, and then every value at
                # once: which came first, the preset or the slider, is not known. A slider
                # the person moved in this edit is something they did on purpose, so it is
                # kept; the preset sets the rest. Nothing is silently overridden: they are
                # told which were kept, and the panel is sent again at once showing the
                # values replies will use (and Custom where they are no preset's).
                moved = {n for n in chosen.values if getattr(updated, n) != getattr(current, n)}
                updated = updated.update({n: v for n, v in chosen.values.items() if n not in moved})
                kept = [n for n in moved if getattr(updated, n) != chosen.values[n]]
                if kept:
                    fields = t("preset.kept.separator", lang).join(
                        t(n, lang) for n in Sampling.model_fields if n in kept
                    )
                    notices.append(t("preset.kept", lang, name=chosen.label, fields=fields))
            if save_as:
                owner = user_id()
                if owner is None:
                    raise PresetsNeedUser()
                saved = await self.presets.save(owner, save_as, updated)
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
                session.compare_with = compare_with
        except ChatLLMError as exc:  # bad values, a bad preset name, a failed save
            log.info("Refused settings: %s", exc)
            await self.send(session, lang)  # the panel shows the old values
            await refuse(exc, lang)
            return
        session.sampling = updated
        session.preset = preset_key  # `send` checks it against the sliders
        if preset_key != previous_key or save_as or updated != current:
            await self.send(session, lang)  # the sliders show what will be used
        _mirror(session)
        for notice in notices:
            await cl.context.emitter.send_toast(notice, "success")
        await self._save(session, lang)

    async def apply_starter(self, session: ChatSession, starter: Starter, lang: str) -> None:
        """A starter's settings, before its message is answered: its preset on the sliders,
        the presets it compares under. The panel shows them; the message's own write
        keeps them with the thread."""
        presets = {p.key: p for p in builtin_presets(lang)}
        if starter.preset:
            preset = presets[f"builtin:{starter.preset}"]
            session.sampling = preset.apply(session.sampling)
            session.preset = preset.key
        if starter.compare_with:
            session.compare_with = [f"builtin:{key}" for key in starter.compare_with]
        await self.send(session, lang)
        _mirror(session)

    async def _save(self, session: ChatSession, lang: str) -> None:
        """The session's new settings kept with the thread; a failed write is shown."""
        if cl.context.session.has_first_interaction:  # else the thread does not exist yet
            try:
                await save_session(self.store, session)
            except ChatLLMError as exc:
                await refuse(exc, lang)

    # ---- deleting a preset: a button, then a confirmation

    async def list_own(self, lang: str) -> None:
        """The user's own presets, each with a button that deletes it once confirmed (a
        message of this chat only: not stored, gone on reload)."""
        own = [p for p in await self.available(lang) if p.key.startswith("user:")]
        if not own:
            await notice(t("presets.none", lang))
            return
        buttons = [
            cl.Action(
                name=DELETE_PRESET,
                payload={"preset": p.key},
                label=t("preset.delete.button", lang, name=p.label),
                icon="trash-2",
            )
            for p in own
        ]
        await notice(t("presets.yours", lang), buttons)

    async def ask_to_delete(self, action: cl.Action, lang: str) -> None:
        """A preset's delete button: the list gives way to the question, confirm or keep."""
        preset = await self._own(action, lang)
        await withdraw(action)
        if preset is None:
            return
        buttons = [
            cl.Action(
                name=DELETE_PRESET_CONFIRMED,
                payload={"preset": preset.key},
                label=t("preset.delete.yes", lang),
                icon="trash-2",
            ),
            cl.Action(name=KEEP_PRESET, payload={}, label=t("preset.delete.no", lang)),
        ]
        await notice(t("preset.delete.confirm", lang, name=preset.label), buttons)

    async def delete(self, session: ChatSession, action: cl.Action, lang: str) -> None:
        """Confirmed: the preset is deleted, and neither chosen nor compared any more."""
        preset = await self._own(action, lang)
        await withdraw(action)
        owner = user_id()
        if preset is None or owner is None:
            return
        if not await self.presets.delete(owner, preset.own_name):
            await cl.context.emitter.send_toast(t("preset.gone", lang), "warning")
            return
        await cl.context.emitter.send_toast(t("preset.deleted", lang, name=preset.label), "success")
        if session.preset == preset.key:
            session.preset = CUSTOM  # the sliders keep its values
        session.compare_with = [k for k in session.compare_with if k != preset.key]
        await self.send(session, lang)
        await self._save(session, lang)

    async def _own(self, action: cl.Action, lang: str) -> Preset | None:
        """The user's own preset a button names; None, and the user told, if it is not one
        (deleted meanwhile, a built-in one, or another user's: a client can send any)."""
        key = str((action.payload or {}).get("preset") or "")
        preset = {p.key: p for p in await self.available(lang)}.get(key)
        if preset is None or not key.startswith("user:"):
            await cl.context.emitter.send_toast(t("preset.gone", lang), "warning")
            return None
        return preset


async def keep_preset(action: cl.Action) -> None:
    """Not deleted after all: the question goes."""
    await withdraw(action)


async def notice(text: str, buttons: list[cl.Action] | None = None) -> cl.Message:
    """A message of this chat only, with buttons: not stored (Chainlit writes what it sends
    unless told it is), so it is gone on reload, as a dialog would be."""
    message = cl.Message(content=text, author="chatllm", actions=buttons or [])
    message.persisted = True
    await message.send()
    return message


async def refuse(exc: ChatLLMError, lang: str) -> None:
    """Settings refused (or not saved), told to this person alone. They are no part of
    the conversation: marked as stored, Chainlit does not write them (it writes what it
    sends, in a task nobody awaits, and in a new chat holds that write back until the
    first message, then makes the thread of it), so they are never in the thread, its
    share link or its export, and never make a thread of their own."""
    message = cl.ErrorMessage(content=describe(exc, lang), author="chatllm")
    message.persisted = True
    await message.send()


def preset_of(sampling: Sampling, presets: list[Preset], chosen: str) -> str:
    """The preset the menu shows: the one chosen while the sliders still hold its values,
    else the first whose values they hold (built-in ones first: a new chat's defaults are
    Balanced's), else Custom."""
    by_key = {p.key: p for p in presets}
    if chosen in by_key and by_key[chosen].matches(sampling):
        return chosen
    return next((p.key for p in presets if p.matches(sampling)), CUSTOM)


async def withdraw(action: cl.Action) -> None:
    """The message whose button was pressed leaves the chat, with its buttons."""
    if action.forId:
        await cl.context.emitter.delete_step({"id": action.forId})


def _mirror(session: ChatSession) -> None:
    """Chainlit keeps its own copy of the panel's values (refused ones, the preset form's
    fields, any key a client sends) and saves it as the thread's chat_settings when the tab
    closes; it is made the session's settings, so what is saved is what replies use."""
    cl.context.session.chat_settings = session.metadata()["chat_settings"]
