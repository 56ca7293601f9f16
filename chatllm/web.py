"""HTTP routes the app adds to Chainlit's server."""

from __future__ import annotations

import html
import logging
import math
import os
import re
import shutil
import socket
from collections.abc import Awaitable, Callable, Iterable
from enum import StrEnum
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import jwt as pyjwt
from chainlit import server as chainlit_server
from chainlit.auth import get_current_user
from chainlit.auth.cookie import get_token_from_cookies
from chainlit.auth.jwt import get_jwt_secret
from chainlit.config import config as chainlit_config
from chainlit.types import (
    DeleteFeedbackRequest,
    ElementRequest,
    ShareThreadRequest,
    UpdateFeedbackRequest,
    UpdateThreadRequest,
)
from chainlit.user import PersistedUser, User
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.security import OAuth2PasswordRequestForm
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatllm.auth import LOGIN_ID, LOGIN_MS, LoginBusy, Passwords, is_loopback
from chatllm.i18n import request_language, t
from chatllm.share import SHARE_PATH, Sharing, flags, may_view, read_only
from chatllm.store import ChatDataLayer
from chatllm.store.datalayer import MAX_THREAD_NAME
from chatllm.store.files import FileStore
from chatllm.store.logins import LoginThrottle
from chatllm.store.users import Users
from chatllm.xray import XRAY_URL

logger = logging.getLogger(__name__)

CurrentUser = Annotated[User | PersistedUser | None, Depends(get_current_user)]


def element_files(store: ChatDataLayer, sharing: Sharing) -> APIRouter:
    """Serves element files stored on disk, to the thread's author, and to those who may
    open its share link while it is shared."""
    router = APIRouter()

    @router.get(FileStore.URL_PREFIX + "/{thread_id}/{element_id}")
    async def element_file(thread_id: str, element_id: str, user: CurrentUser) -> FileResponse:
        if user is None:
            raise HTTPException(status_code=401, detail="Unauthorized")
        shown = await shown_to(store, sharing, user, thread_id)
        if shown is not None and element_id not in {e["id"] for e in shown["elements"]}:
            raise HTTPException(status_code=404, detail="Not found")  # the author's alone
        stored = await store.element_file(thread_id, element_id)
        if stored is None:
            raise HTTPException(status_code=404, detail="Not found")
        path, name, mime = stored
        return FileResponse(path, media_type=mime or "application/octet-stream", filename=name)

    return router


def xray_records(store: ChatDataLayer, sharing: Sharing) -> APIRouter:
    """A reply's token records (chatllm.xray.records), read when its X-ray opens, never
    with the thread: to the thread's author, and to those who may open its share link
    while it is shared (for a reply their page shows)."""
    router = APIRouter()

    @router.get(XRAY_URL + "/{thread_id}/{step_id}")
    async def xray(thread_id: str, step_id: str, user: CurrentUser) -> JSONResponse:
        if user is None:
            raise HTTPException(status_code=401, detail="Unauthorized")
        shown = await shown_to(store, sharing, user, thread_id)
        if shown is not None and step_id not in {s["id"] for s in shown["steps"]}:
            raise HTTPException(status_code=404, detail="Not found")
        data = await store.token_records(thread_id, step_id)
        if data is None:
            raise HTTPException(status_code=404, detail="No token records")
        # numpy with it, on the first X-ray opened: not before the first page.
        from chatllm.xray.records import TokenRecords, UnreadableRecords

        try:
            records = TokenRecords.unpack(data)
        except UnreadableRecords as exc:
            raise HTTPException(status_code=422, detail=f"Unreadable: {exc}") from None
        return JSONResponse(records.view())

    return router


async def shown_to(
    store: ChatDataLayer, sharing: Sharing, user: User | PersistedUser, thread_id: str
) -> dict[str, Any] | None:
    """None for the thread's author; for another user who may open its share link while
    it is shared, the thread as that link shows it (what they may read of it); a 403 for
    anyone else, a 404 for no such thread."""
    author = await require_author(store, user, thread_id, allow_others=True)
    if author == user.identifier:
        return None
    thread = await store.get_thread(thread_id)
    if thread is None or not may_view(thread, user.identifier, sharing):
        raise HTTPException(status_code=403, detail="Not yours")
    return read_only(thread)


async def require_author(
    store: ChatDataLayer,
    user: User | PersistedUser,
    thread_id: str,
    allow_others: bool = False,
) -> str:
    """The thread's author; a 404 for no such thread, and a 403 for another user's unless
    `allow_others` (Chainlit's own check answers that with a 401, which sends the page to
    the login)."""
    author = await store.get_thread_author(thread_id)
    if not author:
        raise HTTPException(status_code=404, detail="Not found")
    if author != user.identifier and not allow_others:
        raise HTTPException(status_code=403, detail="Not yours")
    return author


def owner_checks(store: ChatDataLayer) -> APIRouter:
    """Chainlit's feedback and element routes, behind the check they lack: the caller owns
    the thread the feedback, step or element belongs to. An unknown id is a 404 (Chainlit
    answers a 500 carrying the SQL), another user's a 403. Chainlit's handler then does
    the work. Renaming a thread, too: its author's alone, and a name of blanks is refused
    in the caller's language (Chainlit's took it, and the sidebar showed an empty line)."""
    router = APIRouter()

    async def require_owner(
        user: User | PersistedUser | None,
        table: Literal["steps", "feedbacks", "elements"],
        row_id: str | None,
    ) -> None:
        if user is None:
            raise HTTPException(status_code=401, detail="Unauthorized")
        owner = await store.owner_of(table, row_id) if row_id else None
        if owner is None:
            raise HTTPException(status_code=404, detail="Not found")
        if owner != user.identifier:
            raise HTTPException(status_code=403, detail="Not yours")

    @router.put("/feedback")
    async def update_feedback(
        request: Request, update: UpdateFeedbackRequest, user: CurrentUser
    ) -> Any:
        await require_owner(user, "steps", update.feedback.forId)
        if update.feedback.id and await store.owner_of("feedbacks", update.feedback.id):
            await require_owner(user, "feedbacks", update.feedback.id)
        return await chainlit_server.update_feedback(request, update, user)

    @router.delete("/feedback")
    async def delete_feedback(
        request: Request, payload: DeleteFeedbackRequest, user: CurrentUser
    ) -> Any:
        await require_owner(user, "feedbacks", payload.feedbackId)
        return await chainlit_server.delete_feedback(request, payload, user)

    @router.put("/project/element")
    async def update_element(payload: ElementRequest, user: CurrentUser) -> Any:
        await require_owner(user, "elements", str(payload.element.get("id") or ""))
        return await chainlit_server.update_thread_element(payload, user)

    @router.delete("/project/element")
    async def delete_element(payload: ElementRequest, user: CurrentUser) -> Any:
        await require_owner(user, "elements", str(payload.element.get("id") or ""))
        return await chainlit_server.delete_thread_element(payload, user)

    @router.put("/project/thread")
    async def rename_thread(
        request: Request, payload: UpdateThreadRequest, user: CurrentUser
    ) -> Any:
        if user is None:
            raise HTTPException(status_code=401, detail="Unauthorized")
        await require_author(store, user, payload.threadId)
        name = " ".join(payload.name.split())[:MAX_THREAD_NAME].strip()
        if not any(c.isprintable() and not c.isspace() for c in name):  # blanks, invisibles
            lang = request_language(request.headers.get("accept-language"))
            raise HTTPException(status_code=400, detail=t("thread.rename.empty", lang))
        named = payload.model_copy(update={"name": name})
        return await chainlit_server.rename_thread(request, named, user)

    return router


def shared_threads(
    store: ChatDataLayer, sharing: Sharing, page: Callable[[str, str], Awaitable[str]]
) -> APIRouter:
    """Share links (chatllm.share): sharing and unsharing, by the thread's author only, and
    what a link shows, to those the operator's `sharing` lets in, while the thread is
    shared.

    Chainlit's own read route passes on the thread's metadata less three keys, and lets
    anyone signed in open a shared thread whatever its `on_shared_thread_view` answers;
    this one answers the thread alone (`read_only`), and a 404 for a thread that is not
    shared, is not there, or may not be opened, alike. With `Sharing.ANYONE`, someone not
    signed in who opens a link gets `page(thread id, language)`, a page of the thread
    alone, where Chainlit's view would send them to its login page."""
    router = APIRouter()

    def sharing_on() -> None:
        if sharing is Sharing.OFF:
            raise HTTPException(status_code=404, detail="Thread sharing is off")

    @router.put("/project/thread/share")
    async def share_thread(request: Request, payload: ShareThreadRequest, user: CurrentUser) -> Any:
        sharing_on()
        if user is None:
            raise HTTPException(status_code=401, detail="Unauthorized")
        await require_author(store, user, payload.threadId)
        # The app's own write: Chainlit's handler writes the sharing flags through
        # `update_thread`, which leaves the app's metadata keys alone (a tab closing
        # would otherwise write back a stale copy of them).
        await store.save_thread_metadata(payload.threadId, flags(bool(payload.isShared)))
        return JSONResponse(content={"success": True})

    @router.get("/project/share/{thread_id}")
    async def shared_thread(thread_id: str, user: CurrentUser) -> dict[str, Any]:
        thread = await store.get_thread(thread_id)
        if thread is None or not may_view(thread, user.identifier if user else None, sharing):
            raise HTTPException(status_code=404, detail="Thread not found")
        return read_only(thread)

    @router.get(SHARE_PATH + "{thread_id}")
    async def share_page(request: Request, thread_id: str) -> Any:
        token = _token(dict(request.headers))
        if sharing is not Sharing.ANYONE or (token and _claims(token)):
            return await chainlit_server.serve(request)  # Chainlit's page: its read-only view
        lang = request_language(request.headers.get("accept-language"))
        try:
            body = await page(thread_id, lang)
        except LookupError:
            body = t("share.gone", lang)
            return HTMLResponse(_gone_page(body, lang), status_code=404, headers=_PAGE_HEADERS)
        return HTMLResponse(body, headers=_PAGE_HEADERS)

    return router


#: The public page of a shared thread: nothing loaded from elsewhere, no framing, not cached.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _gone_page(text: str, lang: str) -> str:
    return (
        f'<!doctype html><html lang="{html.escape(lang)}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(text)}</title></head><body><main><h1>{html.escape(text)}</h1>"
        "</main></body></html>"
    )


def mount(server: FastAPI, router: APIRouter, root_path: str = "") -> None:
    """Add `router` to Chainlit's server ahead of Chainlit's own routes, whose catch-all
    page route would otherwise answer every GET first; under `root_path`, as Chainlit's
    own routes are when it is started with `--root-path`."""
    routes = server.router.routes
    before = len(routes)
    server.include_router(router, prefix=root_path.rstrip("/"))
    added = routes[before:]
    del routes[before:]
    routes[0:0] = added


class OriginGuard:
    """ASGI middleware in front of every route and the socket: a request a page of another
    origin sends (its `Origin` is neither this server's nor one the operator allowed) is
    refused, and so is, in local mode, a `Host` that is not a loopback name — a page whose
    DNS name was rebound to 127.0.0.1 gets nothing. Requests without an `Origin` (the
    app's own page loads, scripts and command-line clients) pass."""

    def __init__(
        self, app: ASGIApp, *, allowed: Iterable[str], loopback_only: Callable[[], bool]
    ) -> None:
        self.app = app
        self.allowed = frozenset(allowed)
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            host = headers.get("host", "")
            refusal = self.refusal(host, headers.get("origin"))
            if refusal is not None:
                await _refuse(scope, send, refusal)
                return
        await self.app(scope, receive, send)

    def refusal(self, host: str, origin: str | None) -> str | None:
        """Why a request with these headers is refused, or None."""
        if self.loopback_only() and not is_loopback(urlsplit(f"//{host}").hostname or ""):
            return f"this app serves only its loopback address, not {host!r}"
        if origin is None:
            return None
        parsed = urlsplit(origin)
        if parsed.netloc.lower() == host.lower() or origin.lower() in self.allowed:
            return None
        return f"requests from {origin!r} are not allowed"


async def _refuse(scope: Scope, send: Send, reason: str, status: int = 403) -> None:
    if scope["type"] == "websocket":  # closed before accepting: the client sees a 403
        await send({"type": "websocket.close", "code": 1008, "reason": reason})
        return
    body = reason.encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


#: Paths that act for a signed-in user; a token whose session ended is refused on them.
#: (Pages, assets and the login routes stay open: the login page must load, also for a
#: browser holding an ended session's cookie.) `/auth/jwt` turned any unexpired token
#: into a new one; the app refuses it outright (`refused_routes`), and here too.
SESSION_PATHS = ("/project/", "/ws/", "/feedback", "/user", "/chatllm/", "/mcp", "/auth/jwt")


def app_path(path: str, root_path: str) -> str:
    """A request's path as the app's routes name it: without the root path Chainlit was
    started under (`chainlit run --root-path /chat`), whose routes all sit below it. A
    path outside the root path is answered by none of them; it is kept as it is."""
    if root_path and (path == root_path or path.startswith(root_path + "/")):
        return path[len(root_path) :] or "/"
    return path


def _token(headers: dict[str, str]) -> str | None:
    authorization = headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip() or None
    cookies = SimpleCookie()
    try:
        cookies.load(headers.get("cookie", ""))
    except CookieError:
        return None
    return get_token_from_cookies({name: morsel.value for name, morsel in cookies.items()})


def _claims(token: str) -> dict[str, Any] | None:
    """The token's claims if it is one of this app's and has not expired."""
    secret = get_jwt_secret()
    if not secret:
        return None
    try:
        claims: dict[str, Any] = pyjwt.decode(token, secret, algorithms=["HS256"])
    except pyjwt.PyJWTError:
        return None
    return claims


class SessionGuard:
    """ASGI middleware: a token whose session has ended (logged out, issued before its
    user's password was reset, its user removed) gets a 401 on every route and on the
    socket, although its signature still holds. Also marks cookies `Secure` when the app
    is reached over TLS (directly, or through a proxy saying X-Forwarded-Proto: https)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        users: Users,
        local_user: Callable[[], str | None],
        root_path: str = "",
    ) -> None:
        self.app = app
        self.users = users
        self.local_user = local_user  # the user that may be absent from the database
        self.root_path = root_path.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if app_path(scope["path"], self.root_path).startswith(SESSION_PATHS):
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            token = _token(headers)
            claims = _claims(token) if token else None
            if claims is not None and await self.ended(claims):
                await _refuse(scope, send, "this session has ended; log in again", status=401)
                return
        if scope.get("scheme") in ("https", "wss"):
            send = _secure_cookies(send)
        await self.app(scope, receive, send)

    async def ended(self, claims: dict[str, Any]) -> bool:
        identifier = str(claims.get("identifier") or "")
        metadata = claims.get("metadata") or {}
        login = metadata.get(LOGIN_ID)
        issued = metadata.get(LOGIN_MS)
        if not isinstance(issued, int):  # a token made before logins carried the time
            issued = int(claims.get("iat") or 0) * 1000
        ended = await self.users.session_ended(identifier, issued, login)
        if ended is None:  # no such user: removed, unless it is the local user's first visit
            return identifier != self.local_user()
        return ended


def _secure_cookies(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [
                (name, value + b"; Secure")
                if name.lower() == b"set-cookie" and b"secure" not in value.lower()
                else (name, value)
                for name, value in message["headers"]
            ]
        await send(message)

    return sending


def sessions(users: Users, passwords: Passwords, throttle: LoginThrottle) -> APIRouter:
    """Login with throttling, and logout that ends the session, ahead of Chainlit's."""
    router = APIRouter()

    @router.post("/login")
    async def login(
        request: Request,
        response: Response,
        form_data: Annotated[OAuth2PasswordRequestForm, Depends()],
    ) -> Any:
        account = form_data.username
        address = request.client.host if request.client else ""
        wait = await throttle.admit(account, address)  # counted as failed until it is not
        if wait is not None:
            raise HTTPException(
                status_code=429,
                detail="Too many failed logins; try again later.",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        try:
            answer = await chainlit_server.login(request, response, form_data)
        except LoginBusy as exc:
            raise HTTPException(
                status_code=429, detail=str(exc), headers={"Retry-After": "1"}
            ) from exc
        await throttle.succeeded(account, address)
        return answer

    @router.post("/logout")
    async def logout(request: Request, response: Response) -> Any:
        token = _token(dict(request.headers))  # the cookie, or a bearer token
        claims = _claims(token) if token else None
        login = ((claims or {}).get("metadata") or {}).get(LOGIN_ID)
        if claims is not None and login:
            await users.end_session(str(login), int(claims.get("exp") or 0))
        return await chainlit_server.logout(request, response)

    return router


def guard(server: FastAPI, *, allowed: list[str], loopback_only: Callable[[], bool]) -> None:
    """Credentialed cross-origin calls only from `allowed` origins (Chainlit's CORS
    middleware is set up from its config's `allow_origins`, which would echo any origin
    back with credentials; it gets `allowed` instead), and the `OriginGuard` outermost."""
    for middleware in server.user_middleware:
        if middleware.cls is CORSMiddleware:  # type: ignore[comparison-overlap]
            options: dict[str, Any] = middleware.kwargs
            options["allow_origins"] = list(allowed)
    server.add_middleware(OriginGuard, allowed=allowed, loopback_only=loopback_only)


def session_files(data_dir: Path) -> Path:
    """Give this process a folder of its own for Chainlit's session files (uploads before
    they are stored), under the data directory, and leave the others alone.

    Chainlit keeps them in `.files` beside app.py and deletes that whole folder when its
    server stops: a second instance started in the same place, once stopped, took the
    first one's uploads with it. Folders are named by host and process id; those this
    host's processes left behind are removed (another machine's, on a shared data
    directory, are its own to remove)."""
    import chainlit.config
    import chainlit.server

    root = data_dir / "session-files"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    host = socket.gethostname()
    for folder in root.iterdir():
        name, _, pid = folder.name.rpartition("-")
        if name == host and pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
    mine = root / f"{host}-{os.getpid()}"
    mine.mkdir(mode=0o700, exist_ok=True)
    chainlit.config.FILES_DIRECTORY = mine  # read by each session when it makes its folder
    chainlit.server.FILES_DIRECTORY = mine  # type: ignore[attr-defined]  # removed at stop
    return mine


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: The largest socket.io packet the server takes (Chainlit's default, 1 MB, closed the
#: socket on a long message with no word to the user). Anything up to this arrives and
#: gets an answer; the app refuses a message over CHATLLM_MAX_MESSAGE_CHARS itself.
SOCKET_MAX_BYTES = 8 * 1024 * 1024


#: The app's answer to an edited message: (message id, its new words, its author).
EditHandler = Callable[[str, str, str], Awaitable[None]]


def socket_events(edit: EditHandler | None = None) -> None:
    """Chainlit's socket events for switched-off features answer nothing, an edited
    message is the app's to answer, and Stop answers in the user's language.

    Chainlit registers them whatever the config says: `edit_message` rewrites a message and
    deletes every step after it in the data layer, then runs the message again (with no
    message at all when the id is not one of the session's, which the app would answer
    with an error); `audio_end` names the thread "audio". So each is refused unless its
    feature is on, and an edit also unless its message is one this session has shown; and
    Chainlit's edit never runs: `edit` gets the edited words (a new message beside the old
    one, which stays, with everything after it).
    """
    from chainlit.chat_context import chat_contexts
    from chainlit.session import WebsocketSession

    handlers = chainlit_server.sio.handlers["/"]

    def editable(sid: str, payload: Any) -> bool:
        session = WebsocketSession.get(sid)
        message = payload.get("message") if isinstance(payload, dict) else None
        wanted = message.get("id") if isinstance(message, dict) else None
        shown = chat_contexts.get(session.id, []) if session else []
        return bool(chainlit_config.features.edit_message) and any(m.id == wanted for m in shown)

    def audio(sid: str, *_: Any) -> bool:
        return bool(chainlit_config.features.audio and chainlit_config.features.audio.enabled)

    async def edited(sid: str, payload: Any) -> None:
        from chainlit.context import init_ws_context

        session = WebsocketSession.get(sid)
        if session is None or edit is None:
            return
        init_ws_context(session)
        message = payload["message"]
        await edit(
            str(message["id"]), str(message.get("output") or ""), str(message.get("name") or "")
        )

    for event, allowed in (
        ("audio_start", audio),
        ("audio_chunk", audio),
        ("audio_end", audio),
    ):
        handlers[event] = _only_if(allowed, handlers[event], event)
    handlers["edit_message"] = _only_if(editable, edited, "edit_message")
    handlers["stop"] = _stop


async def _stop(sid: str) -> None:
    """The Stop button, as Chainlit's own handler answers it (a notice, the running task
    cancelled, `on_stop`), with the notice in the user's language: Chainlit's is English
    whatever the browser's."""
    from chainlit.context import init_ws_context
    from chainlit.message import Message as ChatMessage
    from chainlit.session import WebsocketSession

    session = WebsocketSession.get(sid)
    if session is None:
        return
    init_ws_context(session)
    await ChatMessage(content=t("stop.message", session.language)).send()  # type: ignore[no-untyped-call]
    if session.current_task:
        session.current_task.cancel()
    if chainlit_config.code.on_stop:
        await chainlit_config.code.on_stop()


def _only_if(
    allowed: Callable[..., bool], handler: Callable[..., Any], event: str
) -> Callable[..., Any]:
    async def checked(sid: str, *args: Any) -> Any:
        if not allowed(sid, *args):
            logger.info("socket %s: %s refused (switched off, or not this session's)", sid, event)
            return None
        return await handler(sid, *args)

    return checked


def socket_limit(max_message_chars: int) -> int:
    """Let a message of `max_message_chars` (and well beyond) reach the app; the limit."""
    limit = max(SOCKET_MAX_BYTES, max_message_chars * 6 + 65536)  # JSON: ≤ 6 bytes a char
    chainlit_server.sio.eio.max_http_buffer_size = limit
    return limit


def refused_routes() -> APIRouter:
    """Chainlit routes for what the app does not offer, answered 404 ahead of Chainlit's.

    `POST /auth/jwt` signs a new 7-day token for whoever shows any unexpired one, and
    `create_user`s its user: a removed user's old token brought the user back and renewed
    itself without limit. The app's logins are its password form (`/login`) and, in local
    mode, `/auth/header`; Chainlit's page calls `/auth/jwt` only for a token in its URL,
    which the app never hands out."""
    router = APIRouter()

    @router.post("/auth/jwt")
    async def jwt_auth() -> Any:
        raise HTTPException(status_code=404, detail="Not found")

    return router


class Guard(StrEnum):
    """How one of Chainlit's routes or socket events is kept to whom it belongs."""

    #: The app's own route answers it, mounted ahead of Chainlit's (see its router).
    APP = "app"
    #: It needs a signed-in user; `SessionGuard` refuses an ended session's token, and
    #: the reason says what checks the caller's ownership.
    SESSION = "session"
    #: Anyone may call it: it holds nothing of any user's (the reason says why).
    OPEN = "open"
    #: A feature the app keeps off: the app answers 404 or ignores the event.
    OFF = "off"


#: Every HTTP route Chainlit 2.12 registers ("METHOD path", without the root path), how
#: it is guarded and why that is enough. tests/test_routes.py fails on a route Chainlit
#: adds that is not here (an upgrade), and on a line here for a route it no longer has.
CHAINLIT_ROUTES: dict[str, tuple[Guard, str]] = {
    "GET /public/{filename:path}": (Guard.OPEN, "the app's public/ files: scripts, CSS, icons"),
    "GET /assets/{filename:path}": (Guard.OPEN, "Chainlit's page's scripts and styles"),
    "GET /copilot/{filename:path}": (Guard.OPEN, "Chainlit's copilot script (not used)"),
    "GET /auth/config": (Guard.OPEN, "which logins exist; the login page needs it"),
    "POST /login": (Guard.APP, "the throttled password login (`sessions`)"),
    "POST /logout": (Guard.APP, "ends that session (`sessions`)"),
    "POST /auth/jwt": (Guard.OFF, "renewed any token and re-created removed users"),
    "POST /auth/header": (Guard.OPEN, "local mode's login; 400 in password mode"),
    "GET /auth/oauth/{provider_id}": (Guard.OPEN, "no OAuth provider: Chainlit answers 400"),
    "GET /auth/oauth/{provider_id}/callback": (Guard.OPEN, "no OAuth provider: 400"),
    "POST /auth/oauth/azure-ad-hybrid/callback": (Guard.OPEN, "no OAuth provider: 400"),
    "GET /user": (Guard.SESSION, "the caller's own user"),
    "POST /set-session-cookie": (Guard.OPEN, "sets a sticky-session id cookie, nothing else"),
    "GET /project/translations": (Guard.OPEN, "Chainlit's translations"),
    "GET /project/settings": (Guard.SESSION, "the page's configuration, the user's profiles"),
    "PUT /feedback": (Guard.APP, "the step's thread must be the caller's (`owner_checks`)"),
    "DELETE /feedback": (Guard.APP, "the feedback's thread must be the caller's"),
    "POST /project/threads": (Guard.SESSION, "Chainlit lists the caller's own threads only"),
    "GET /project/thread/{thread_id}": (Guard.SESSION, "Chainlit checks the author"),
    "GET /project/share/{thread_id}": (
        Guard.APP,
        "the thread alone, while shared (`shared_threads`)",
    ),
    "GET /project/thread/{thread_id}/element/{element_id}": (
        Guard.SESSION,
        "Chainlit checks the author; the store finds the element in that thread only",
    ),
    "PUT /project/element": (Guard.APP, "the element's thread must be the caller's"),
    "DELETE /project/element": (Guard.APP, "the element's thread must be the caller's"),
    "PUT /project/thread": (Guard.APP, "renaming: the author alone, a name not blank"),
    "PUT /project/thread/share": (Guard.APP, "the author alone (`shared_threads`)"),
    "DELETE /project/thread": (Guard.SESSION, "Chainlit checks the author; the store too"),
    "POST /project/action": (Guard.SESSION, "the session must be the caller's (Chainlit)"),
    "POST /mcp": (Guard.SESSION, "MCP is off (no on_mcp_connect): Chainlit answers 400"),
    "DELETE /mcp": (Guard.SESSION, "MCP is off: nothing to disconnect"),
    "POST /project/file": (Guard.SESSION, "uploads into the caller's own session (Chainlit)"),
    "GET /project/file/{file_id}": (Guard.SESSION, "the caller's own session's files"),
    "GET /favicon": (Guard.OPEN, "the icon"),
    "GET /logo": (Guard.OPEN, "the logo"),
    "GET /avatars/{avatar_id:str}": (Guard.OPEN, "authors' pictures from public/avatars"),
    "HEAD /": (Guard.OPEN, "a status check"),
    "GET /health": (Guard.OPEN, "a status check"),
    "GET /{full_path:path}": (Guard.OPEN, "the page itself; its data comes from the routes above"),
}

#: Every socket.io event Chainlit 2.12 handles, as for the routes. The socket's path is a
#: session path: an ended session cannot connect at all.
CHAINLIT_EVENTS: dict[str, tuple[Guard, str]] = {
    "connect": (Guard.SESSION, "a signed-in user; a thread to resume must be theirs"),
    "connection_successful": (Guard.SESSION, "starts or resumes the session's own thread"),
    "clear_session": (Guard.SESSION, "the caller's own session"),
    "disconnect": (Guard.SESSION, "writes Chainlit's keys only (`chainlit_owned`)"),
    "stop": (Guard.APP, "the session's own reply, in its language (`_stop`)"),
    "edit_message": (
        Guard.APP,
        "the app's own: the edited words as a new message beside the old (Chainlit's rewrote"
        " it and deleted every later step); only a message this session showed",
    ),
    "message_favorite": (Guard.OFF, "favorites are off in .chainlit/config.toml"),
    "fetch_favorites": (Guard.OFF, "favorites are off"),
    "client_message": (Guard.SESSION, "into the session's own thread; the store checks it"),
    "window_message": (Guard.SESSION, "no on_window_message: nothing runs"),
    "audio_start": (Guard.OFF, "audio is off"),
    "audio_chunk": (Guard.OFF, "audio is off"),
    "audio_end": (Guard.OFF, "audio is off (it named the thread 'audio')"),
    "chat_settings_change": (Guard.SESSION, "the session's own settings, validated"),
    "chat_settings_edit": (Guard.SESSION, "a preset previewed in the open panel; nothing kept"),
}


#: A tag of Chainlit's page that loads from another origin: its KaTeX stylesheet (from a
#: CDN) and its connections opened ahead to Google's fonts.
_ELSEWHERE = re.compile(r"""<link\b[^>]*\bhref=["']https?://[^>]*>\s*""", re.S)


def offline_page() -> None:
    """Chainlit's page, loading nothing from elsewhere. It asked a CDN for KaTeX's
    stylesheet (LaTeX is off in .chainlit/config.toml) and opened connections to Google's
    font servers (the theme names no web font): offline, the request failed, and online it
    told third parties who opened the app. Chainlit builds the page in its
    `get_html_template` on each request; this wraps it."""
    build: Callable[[str], str] = chainlit_server.get_html_template

    def page(root_path: str) -> str:
        return _ELSEWHERE.sub("", build(root_path))

    chainlit_server.get_html_template = page
