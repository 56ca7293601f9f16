"""HTTP routes the app adds to Chainlit's server."""

from __future__ import annotations

from typing import Annotated

from chainlit.auth import get_current_user
from chainlit.data.acl import is_thread_author
from chainlit.user import PersistedUser, User
from fastapi import APIRouter, Depends, FastAPI, HTTPException
from fastapi.responses import FileResponse

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


def mount(server: FastAPI, router: APIRouter) -> None:
    """Add `router` to Chainlit's server ahead of Chainlit's own routes, whose catch-all
    page route would otherwise answer every GET first. Its paths are all under /chatllm/."""
    routes = server.router.routes
    before = len(routes)
    server.include_router(router)
    added = routes[before:]
    del routes[before:]
    routes[0:0] = added
