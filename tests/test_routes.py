"""Every route and socket event the installed Chainlit registers is either answered by the
app's own code or listed, with the reason it is safe, in chatllm.web's inventory (the
README's "Who can see and change what"). A Chainlit upgrade that adds one turns this red
until someone has decided how it is guarded."""

from __future__ import annotations

from typing import Any

from chainlit import server as chainlit_server
from fastapi import APIRouter
from fastapi.routing import APIRoute

from chatllm.share import Sharing
from chatllm.web import (
    CHAINLIT_EVENTS,
    CHAINLIT_ROUTES,
    SESSION_PATHS,
    Guard,
    app_path,
    element_files,
    owner_checks,
    refused_routes,
    sessions,
    shared_threads,
    xray_records,
)


def named(routes: list[Any]) -> set[str]:
    """'METHOD path' of each HTTP route."""
    return {
        f"{method} {route.path}"
        for route in routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }


def app_routes() -> set[str]:
    """The routes the app mounts ahead of Chainlit's (app.py mounts these routers). Only
    their paths are read: nothing they were built with is called."""
    nothing: Any = None
    routers: list[APIRouter] = [
        element_files(nothing, Sharing.USERS),
        xray_records(nothing, Sharing.USERS),
        owner_checks(nothing),
        shared_threads(nothing, Sharing.USERS, nothing),
        sessions(nothing, nothing, nothing),
        refused_routes(),
    ]
    return {route for router in routers for route in named(router.routes)}


def test_every_chainlit_route_is_guarded_by_the_app_or_listed_safe_with_a_reason() -> None:
    chainlit = named(chainlit_server.router.routes)
    assert chainlit, "Chainlit's router has no routes: has it moved?"
    unlisted = chainlit - set(CHAINLIT_ROUTES)
    assert not unlisted, f"Chainlit routes nobody has decided how to guard: {sorted(unlisted)}"
    gone = set(CHAINLIT_ROUTES) - chainlit
    assert not gone, f"listed routes Chainlit no longer has: {sorted(gone)}"
    ours = app_routes()
    for route, (guard, reason) in CHAINLIT_ROUTES.items():
        assert reason.strip(), route
        path = route.split(" ", 1)[1]
        if guard in (Guard.APP, Guard.OFF):  # the app's route answers first
            assert route in ours, f"{route} is {guard} but the app mounts no such route"
        if guard is Guard.SESSION:  # an ended session's token is refused on it
            assert path.startswith(SESSION_PATHS), f"{route}: SessionGuard does not cover it"


def test_every_chainlit_socket_event_is_guarded_or_listed_safe_with_a_reason() -> None:
    handled = set(chainlit_server.sio.handlers["/"])
    assert handled == set(CHAINLIT_EVENTS), (
        f"unlisted: {sorted(handled - set(CHAINLIT_EVENTS))};"
        f" listed but gone: {sorted(set(CHAINLIT_EVENTS) - handled)}"
    )
    assert all(reason.strip() for _, reason in CHAINLIT_EVENTS.values())
    # The socket itself is a session path: an ended session cannot connect.
    assert "/ws/socket.io".startswith(SESSION_PATHS)


def test_the_guards_name_paths_without_the_root_path_the_app_is_served_under() -> None:
    assert app_path("/chat/project/threads", "/chat") == "/project/threads"
    assert app_path("/chat/ws/socket.io/", "/chat") == "/ws/socket.io/"
    assert app_path("/chat", "/chat") == "/"
    assert app_path("/chatter/project/x", "/chat") == "/chatter/project/x"  # not under it
    assert app_path("/project/threads", "") == "/project/threads"
