"""The Share command: this thread's read-only link (chatllm.share) with a QR code for a room
to scan, and the button that stops sharing it."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import chainlit as cl

from chatllm.auth import is_loopback
from chatllm.chat.actions import STOP_SHARING
from chatllm.chat.panel import notice, withdraw
from chatllm.chat.session import current_lang, show_error
from chatllm.errors import ChatLLMError
from chatllm.export import conversation_steps
from chatllm.i18n import t
from chatllm.share import Sharing, flags, link, qr_png
from chatllm.store import ChatDataLayer

log = logging.getLogger("chatllm")


class Shares:
    def __init__(self, store: ChatDataLayer, sharing: Sharing, public_url: str | None) -> None:
        self.store = store
        self.sharing = sharing
        self.public_url = public_url

    async def share(self) -> None:
        """Share this chat's thread and show its link, with a QR code and a Stop sharing
        button (a message of this chat only: not stored, so not part of what is shared)."""
        lang = current_lang()
        if self.sharing is Sharing.OFF:
            await cl.ErrorMessage(content=t("share.off", lang), author="chatllm").send()
            return
        thread_id = cl.context.session.thread_id
        thread = await self.store.get_thread(thread_id)
        # A client names its chat's thread itself: another user's is not its own to share.
        if (
            thread is None
            or not _mine(thread.get("userIdentifier"))
            or not conversation_steps(thread)
        ):
            await cl.ErrorMessage(content=t("share.empty", lang), author="chatllm").send()
            return
        if not await self._set_shared(thread_id, True, lang):
            return
        url = link(self.base(), thread_id)
        text = t("share.ready", lang, link=url, who=t(f"share.who.{self.sharing}", lang))
        host = urlsplit(url).hostname or ""
        if is_loopback(host):
            text += "\n\n" + t("share.loopback", lang, host=host)
        stop = cl.Action(
            name=STOP_SHARING, payload={}, label=t("share.stop", lang), icon="link-2-off"
        )
        message = await notice(text, [stop])
        qr = cl.Image(
            name=t("share.qr", lang), content=qr_png(url), mime="image/png", display="inline"
        )
        qr.size = "medium"
        await qr.send(for_id=message.id, persist=False)

    async def stop(self, action: cl.Action) -> None:
        """The link stops working; the message that showed it goes."""
        lang = current_lang()
        await withdraw(action)
        thread_id = cl.context.session.thread_id
        if not _mine(await self.store.get_thread_author(thread_id)):
            return
        if await self._set_shared(thread_id, False, lang):
            await cl.context.emitter.send_toast(t("share.stopped", lang), "success")

    async def _set_shared(self, thread_id: str, shared: bool, lang: str) -> bool:
        """Share the thread or stop; whether it was written (a failed write is shown)."""
        try:
            await self.store.save_thread_metadata(thread_id, flags(shared))
        except ChatLLMError as exc:
            await show_error(exc, lang)
            return False
        return True

    def base(self) -> str:
        """The app's address as the sharer's browser reached it (its page's origin, which
        a proxy in front does not change), unless the operator names it."""
        if self.public_url:
            return self.public_url
        environ = cl.context.session.environ
        origin = environ.get("HTTP_ORIGIN")
        if not origin:
            scheme = environ.get("HTTP_X_FORWARDED_PROTO") or environ.get("wsgi.url_scheme")
            host = environ.get("HTTP_X_FORWARDED_HOST") or environ.get("HTTP_HOST")
            origin = f"{scheme or 'http'}://{host or '127.0.0.1'}"
        return origin.rstrip("/") + self.store.files.url_root


def _mine(author: str | None) -> bool:
    """Whether the signed-in user of this chat is `author`."""
    user = cl.user_session.get("user")
    return bool(author) and author == getattr(user, "identifier", None)
