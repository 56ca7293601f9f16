"""HTTP routes the app adds to Chainlit's server."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from chainlit import server as chainlit_server
from chainlit.auth import get_current_user
from chainlit.config import config as chainlit_config
from chainlit.data.acl import is_thread_author
from chainlit.types import (
    DeleteFeedbackRequest,
    ElementRequest,
    ShareThreadRequest,
    UpdateFeedbackRequest,
)
from chainlit.user import PersistedUser, User
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from chatllm.auth import is_loopback
from chatllm.store import ChatDataLayer
from chatllm.store.files import FileStore

CurrentUser = Annotated[User | PersistedUser | None, Depends(get_current_user)]


def element_files(store: ChatDataLayer) -> APIRouter:
    """Serves element files stored on disk, to the thread's author only."""
    router = APIRouter()

    @router.get(FileStore.URL_PREFIX + "/{thread_id}/{element_id}")
    async def element_file(thread_id: str, element_id: str, user: CurrentUser) -> FileResponse:
        if user is None:
            raise HTTPException(status_code=401, detail="Unauthorized")
        await is_thread_author(user.identifier, thread_id)
        stored = await store.element_file(thread_id, element_id)
        if stored is None:
            raise HTTPException(status_code=404, detail="Not found")
        path, name, mime = stored
        return FileResponse(path, media_type=mime or "application/octet-stream", filename=name)

    return router


def owner_checks(store: ChatDataLayer) -> APIRouter:
    """Chainlit's feedback and element routes, behind the check they lack: the caller owns
    the thread the feedback, step or element belongs to. An unknown id is a 404 (Chainlit
    answers a 500 carrying the SQL), another user's a 403. Chainlit's handler then does
    the work. Thread sharing stays off through the API while the operator has it off."""
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

    def sharing_on() -> None:
        if not chainlit_config.features.allow_thread_sharing:
            raise HTTPException(status_code=404, detail="Thread sharing is off")

    @router.put("/project/thread/share")
    async def share_thread(request: Request, payload: ShareThreadRequest, user: CurrentUser) -> Any:
        sharing_on()
        return await chainlit_server.share_thread(request, payload, user)

    @router.get("/project/share/{thread_id}")
    async def shared_thread(request: Request, thread_id: str, user: CurrentUser) -> Any:
        sharing_on()
        return await chainlit_server.get_shared_thread(request, thread_id, user)

    return router


def mount(server: FastAPI, router: APIRouter) -> None:
    """Add `router` to Chainlit's server ahead of Chainlit's own routes, whose catch-all
    page route would otherwise answer every GET first. Its paths are all under /chatllm/."""
    routes = server.router.routes
    before = len(routes)
    server.include_router(router)
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


async def _refuse(scope: Scope, send: Send, reason: str) -> None:
    if scope["type"] == "websocket":  # closed before accepting: the client sees a 403
        await send({"type": "websocket.close", "code": 1008, "reason": reason})
        return
    body = reason.encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def guard(server: FastAPI, *, allowed: list[str], loopback_only: Callable[[], bool]) -> None:
    """Credentialed cross-origin calls only from `allowed` origins (Chainlit's CORS
    middleware is set up from its config's `allow_origins`, which would echo any origin
    back with credentials; it gets `allowed` instead), and the `OriginGuard` outermost."""
    for middleware in server.user_middleware:
        if middleware.cls is CORSMiddleware:  # type: ignore[comparison-overlap]
            options: dict[str, Any] = middleware.kwargs
            options["allow_origins"] = list(allowed)
    server.add_middleware(OriginGuard, allowed=allowed, loopback_only=loopback_only)
