"""A reply's sampling X-ray on the page (issue 27): opened from the reply's button, a
view under it (public/elements/XRay.jsx) that reads the reply's token records itself,
through the owner-checked route (chatllm.web), and moves the samplers' cuts live."""

from __future__ import annotations

from typing import Any

import chainlit as cl

from chatllm.chat.replies import thread_path
from chatllm.chat.session import current_lang
from chatllm.i18n import CATALOGUES, t
from chatllm.receipts import receipt_of
from chatllm.sampling import Sampling
from chatllm.store import ChatDataLayer
from chatllm.xray import XRAY_URL
from chatllm.xray.chain import CUTS

#: The sampling values the view's sliders move (the others, such as the penalties, stay
#: as the reply had them).
SLIDERS = ("temperature", "top_k", "top_p", "min_p", "typical_p")
#: The values the view's chain reads.
CHAIN_VALUES = (
    *SLIDERS,
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "mirostat_mode",
)


def view_labels(lang: str) -> dict[str, str]:
    """The view's words in `lang`: every catalogue key under "xray.labels."."""
    prefix = "xray.labels."
    return {
        key.removeprefix(prefix): t(key, lang) for key in CATALOGUES["en"] if key.startswith(prefix)
    }


class XRay:
    def __init__(self, store: ChatDataLayer) -> None:
        self.store = store

    async def show(self, action: cl.Action) -> None:
        """The X-ray under the reply whose button was pressed; a reply with no token
        records (written before them, or with them off) says so instead."""
        lang = current_lang()
        step_id = str(action.payload.get("step"))
        thread_id = cl.context.session.thread_id
        if await self.store.token_records(thread_id, step_id) is None:
            await cl.context.emitter.send_toast(t("xray.none", lang), "warning")
            return
        path = await thread_path(self.store, step_id)
        step = next((s for s in path.get("steps") or [] if s["id"] == step_id), None)
        receipt = receipt_of(step.get("metadata") if step else None)
        made = {**Sampling().model_dump(), **(receipt.sampling if receipt else {})}
        sampling: dict[str, Any] = {name: made[name] for name in CHAIN_VALUES}
        element = cl.CustomElement(
            name="XRay",
            display="inline",
            props={
                "url": f"{XRAY_URL}/{thread_id}/{step_id}",
                "sampling": sampling,
                "labels": view_labels(lang),
                "names": {name: t(name, lang) for name in SLIDERS},
                "stages": {
                    **{stage: t(stage, lang) for stage in CUTS},
                    "greedy": t("temperature", lang),
                },
                "lang": lang,
            },
        )
        element.id = f"xray:{step_id}"  # sent again, it replaces itself
        await element.send(for_id=step_id, persist=False)
