"""The settings panel (presets, comparison sets, the sliders) and the chat's commands."""

from __future__ import annotations

import logging
from typing import Any

import chainlit as cl
from chainlit.input_widget import InputWidget, MultiSelect, Select, Slider, Switch, TextInput

from chatllm.chat.session import (
    CUSTOM,
    ChatSession,
    save_session,
    show_error,
    user_id,
)
from chatllm.compare import MAX_SETS
from chatllm.errors import ChatLLMError, PresetError
from chatllm.i18n import t
from chatllm.presets import Preset, Presets
from chatllm.sampling import Sampling
from chatllm.store import ChatDataLayer

log = logging.getLogger("chatllm")

COMPARE = "Compare"
EXPORT = "Export"
IMPORT = "Import"
#: The chat's commands: id, icon (a lucide name), shown as a button beside the input.
COMMANDS = ((COMPARE, "columns-3", True), (EXPORT, "download", False), (IMPORT, "upload", False))


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


async def send_commands(lang: str) -> None:
    await cl.context.emitter.set_commands(
        [
            {
                "id": command,
                "icon": icon,
                "description": t(f"command.{command.lower()}", lang),
                "button": button,
                "persistent": False,
                "selected": False,
            }
            for command, icon, button in COMMANDS
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
        """Show the panel: preset, comparison sets, saving a preset, then the sliders."""
        presets = await self.available(lang)
        keys = {p.key for p in presets}
        widgets: list[InputWidget] = [
            Select(
                id="preset",
                label=t("preset", lang),
                items={t("preset.custom", lang): CUSTOM, **{p.label: p.key for p in presets}},
                initial_value=session.preset if session.preset in keys else CUSTOM,
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
                initial=[k for k in session.compare_with if k in keys],
                tooltip=t("compare_with.help", lang),
            ),
            *sampling_widgets(session.sampling, lang),
        ]
        await cl.ChatSettings(widgets).send()
        _mirror(session)

    async def update(self, session: ChatSession, values: dict[str, Any], lang: str) -> None:
        """Apply the panel: a newly chosen preset sets the sliders, a name saves the current
        values as a preset, and slider changes apply to the next reply. Bad values are
        refused and the old ones kept."""
        current = session.sampling
        values = dict(values)
        preset_key = str(values.pop("preset", None) or CUSTOM)
        name = values.pop("save_preset", None)
        compare_with = values.pop("compare_with", None)
        delete = values.pop("delete_preset", None) is True
        previous_key = session.preset
        presets = {p.key: p for p in await self.available(lang)}
        notices: list[str] = []
        save_as = ""
        try:
            if name is not None and not isinstance(name, str):
                raise PresetError("a preset name must be text")
            save_as = (name or "").strip()
            updated = current.update(
                {k: v for k, v in values.items() if k in Sampling.model_fields}
            )
            if preset_key != previous_key and preset_key in presets:
                updated = presets[preset_key].apply(updated)
            elif preset_key in presets and not presets[preset_key].matches(updated):
                preset_key = CUSTOM  # a slider moved away from the preset
            if delete and preset_key.startswith("user:"):
                owner = user_id()
                name = presets[preset_key].label if preset_key in presets else ""
                if owner is not None and await self.presets.delete(owner, name):
                    notices.append(t("preset.deleted", lang, name=name))
                presets.pop(preset_key, None)
                preset_key = CUSTOM
            if save_as:
                owner = user_id()
                if owner is None:
                    raise PresetError("saving presets needs a signed-in user")
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
            await show_error(exc, lang)
            return
        session.sampling = updated
        session.preset = preset_key
        if preset_key != previous_key or save_as or delete or updated != current:
            await self.send(session, lang)  # the sliders show what will be used
        _mirror(session)
        for notice in notices:
            await cl.context.emitter.send_toast(notice, "success")
        if cl.context.session.has_first_interaction:  # else the thread does not exist yet
            try:
                await save_session(self.store, session)
            except ChatLLMError as exc:
                await show_error(exc, lang)


def _mirror(session: ChatSession) -> None:
    """Chainlit keeps its own copy of the panel's values (refused ones, the preset form's
    fields, any key a client sends) and saves it as the thread's chat_settings when the tab
    closes; it is made the session's settings, so what is saved is what replies use."""
    cl.context.session.chat_settings = session.metadata()["chat_settings"]
