"""Logins a guesser cannot run through, and sessions that end when they should: on logout,
on a password reset, on the user's removal. Password mode on a real server."""

from __future__ import annotations

import asyncio
import io
import re
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chatllm.auth import LoginBusy, Passwords
from chatllm.cli import main as cli
from chatllm.config import Settings
from chatllm.store import ChatDataLayer, Database
from chatllm.store.files import FileStore
from chatllm.store.logins import LoginThrottle
from chatllm.web import CHAINLIT_ROUTES, SESSION_PATHS
from tests.support import AppServer, socket_connects

PASSWORD = "a-good-password-1"


def users(settings: Settings, *argv: str, password: str = PASSWORD) -> None:
    stdin = sys.stdin
    sys.stdin = io.StringIO(password + "\n")
    try:
        assert cli(["users", *argv], settings=settings) == 0
    finally:
        sys.stdin = stdin


#: Each security test below runs on the app served at the root of its address, and under a
#: root path (`chainlit run --root-path /chat`), where Chainlit's routes all move below it.
ROOT_PATHS = pytest.mark.parametrize("root_path", ["", "/chat"], ids=["at-root", "root-path"])


@pytest.fixture(scope="module", params=["", "/chat"], ids=["at-root", "root-path"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[AppServer, Settings]]:
    data_dir = tmp_path_factory.mktemp("sessions")
    settings = Settings(_env_file=None, data_dir=data_dir)  # type: ignore[call-arg]
    for name in ("ada", "bob", "cyd", "dee", "eli", "fin"):
        users(settings, "add", name, "--password-stdin")
    app = AppServer(data_dir, root_path=request.param).start()
    yield app, settings
    app.stop()


def login(app: AppServer, name: str, password: str = PASSWORD, **headers: str) -> httpx.Response:
    return httpx.post(
        app.base + "/login",
        data={"username": name, "password": password},
        headers=headers,
        timeout=60,
    )


def signed_in(app: AppServer, name: str) -> httpx.Client:
    answer = login(app, name)
    assert answer.status_code == 200, answer.text
    return httpx.Client(base_url=app.base, cookies=answer.cookies, timeout=30)


def works(client: httpx.Client) -> bool:
    answer = client.post("/project/threads", json={"pagination": {"first": 5}, "filter": {}})
    assert answer.status_code in (200, 401), answer.text
    return answer.status_code == 200


def test_logging_out_ends_that_session_and_no_other(server: tuple[AppServer, Settings]) -> None:
    app, _ = server
    laptop, phone = signed_in(app, "ada"), signed_in(app, "ada")
    token = str(laptop.cookies.get("access_token"))
    assert works(laptop) and works(phone)
    assert laptop.post("/logout").status_code == 200
    # The laptop's cookie, kept by someone (its signature still holds until it expires).
    kept = httpx.Client(base_url=app.base, cookies={"access_token": token}, timeout=30)
    assert not works(kept)
    assert works(phone)


def test_a_logged_out_token_is_refused_everywhere(server: tuple[AppServer, Settings]) -> None:
    app, _ = server
    answer = login(app, "bob")
    token = answer.cookies["access_token"]
    client = httpx.Client(base_url=app.base, cookies={"access_token": token}, timeout=30)
    assert works(client) and client.get("/user").status_code == 200
    assert client.post("/logout").status_code == 200
    kept = httpx.Client(base_url=app.base, cookies={"access_token": token}, timeout=30)
    assert not works(kept)
    assert kept.get("/user").status_code == 401
    bearer = httpx.get(app.base + "/user", headers={"Authorization": f"Bearer {token}"})
    assert bearer.status_code == 401
    assert not asyncio.run(token_connects(app, token))
    assert works(signed_in(app, "bob"))  # a new login is a new session


async def token_connects(app: AppServer, token: str) -> bool:
    return await socket_connects(app.base, {"Cookie": f"access_token={token}"})


def test_a_password_reset_ends_every_session_begun_before_it(
    server: tuple[AppServer, Settings],
) -> None:
    app, settings = server
    before = signed_in(app, "cyd")
    token = str(before.cookies.get("access_token"))
    assert works(before) and asyncio.run(token_connects(app, token))
    users(settings, "reset", "cyd", "--password-stdin", password="another-password-2")
    assert not works(before)
    assert not asyncio.run(token_connects(app, token))
    assert login(app, "cyd").status_code == 401  # the old password is gone too
    after = login(app, "cyd", "another-password-2")
    assert after.status_code == 200
    assert works(httpx.Client(base_url=app.base, cookies=after.cookies, timeout=30))


def test_a_removed_user_is_signed_out_and_never_comes_back_without_a_password(
    server: tuple[AppServer, Settings],
) -> None:
    app, settings = server
    dee = signed_in(app, "dee")
    assert works(dee)
    users(settings, "remove", "dee", "--yes")
    assert not works(dee)
    assert dee.get("/user").status_code == 401
    assert not asyncio.run(token_connects(app, str(dee.cookies.get("access_token"))))
    assert login(app, "dee").status_code == 401
    with sqlite3.connect(settings.data_dir / "chatllm.db") as raw:  # nothing re-created her
        assert raw.execute("SELECT count(*) FROM users WHERE identifier = 'dee'").fetchone() == (0,)


def test_a_removed_users_old_token_renews_nothing_and_brings_nobody_back(
    server: tuple[AppServer, Settings],
) -> None:
    """Chainlit's `POST /auth/jwt` signed a fresh 7-day token for any unexpired one and
    upserted its user: a removed user came back (no password, no ended sessions) and both
    her tokens worked again. Any token, live or not, gets nothing from it."""
    app, settings = server
    live = str(signed_in(app, "fin").cookies.get("access_token"))
    renewed = httpx.post(app.base + "/auth/jwt", headers={"Authorization": f"Bearer {live}"})
    assert renewed.status_code == 404 and "access_token" not in renewed.cookies
    eli = signed_in(app, "eli")
    token = str(eli.cookies.get("access_token"))
    users(settings, "remove", "eli", "--yes")
    again = httpx.post(app.base + "/auth/jwt", headers={"Authorization": f"Bearer {token}"})
    assert again.status_code in (401, 404) and "access_token" not in again.cookies
    assert eli.get("/user").status_code == 401
    with sqlite3.connect(settings.data_dir / "chatllm.db") as raw:
        assert raw.execute("SELECT count(*) FROM users WHERE identifier = 'eli'").fetchone() == (0,)


def session_routes() -> list[tuple[str, str]]:
    """(method, path) of every route that acts for a signed-in user: Chainlit's (from the
    inventory) and the app's own, path parameters filled in."""
    listed = [route.split(" ", 1) for route in CHAINLIT_ROUTES]
    listed.append(["GET", FileStore.URL_PREFIX + "/{thread_id}/{element_id}"])
    return [
        (method, re.sub(r"\{[^}]+\}", "x", path))
        for method, path in listed
        if path.startswith(SESSION_PATHS)
    ]


def test_an_ended_session_is_refused_on_every_route_that_acts_for_a_user(
    server: tuple[AppServer, Settings],
) -> None:
    app, _ = server
    ada = signed_in(app, "ada")
    token = str(ada.cookies.get("access_token"))
    assert ada.post("/logout").status_code == 200
    kept = httpx.Client(base_url=app.base, cookies={"access_token": token}, timeout=30)
    routes = session_routes()
    assert len(routes) >= 20
    for method, path in routes:
        answer = kept.request(method, path, json={})
        assert answer.status_code == 401, (method, path, answer.status_code)
        assert "session has ended" in answer.text, (method, path, answer.text)


def test_a_login_cookie_lasts_a_week_and_is_secure_over_tls(
    server: tuple[AppServer, Settings],
) -> None:
    app, _ = server
    plain = login(app, "ada")
    cookie = plain.headers["set-cookie"].lower()
    assert "max-age=604800" in cookie and "httponly" in cookie and "secure" not in cookie
    # Behind a TLS proxy on this machine (uvicorn trusts 127.0.0.1's forwarded headers).
    tls = login(app, "ada", **{"X-Forwarded-Proto": "https"})
    assert tls.status_code == 200
    assert "; secure" in tls.headers["set-cookie"].lower()


@ROOT_PATHS
def test_guessing_passwords_is_throttled_per_account_then_per_address(
    tmp_path: Path, root_path: str
) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    for name in ("eve", "fay"):
        users(settings, "add", name, "--password-stdin")
    app = AppServer(
        tmp_path,
        env={"CHATLLM_LOGIN_ATTEMPTS": "3", "CHATLLM_LOGIN_ADDRESS_ATTEMPTS": "5"},
        root_path=root_path,
    ).start()
    try:
        for _ in range(3):
            assert login(app, "eve", "a-wrong-guess").status_code == 401
        locked = login(app, "eve", "a-wrong-guess")
        assert locked.status_code == 429
        assert 0 < int(locked.headers["retry-after"]) <= 300
        assert login(app, "eve").status_code == 429  # the right password waits too
        assert login(app, "fay").status_code == 200  # another account is not locked
        for name in ("x1", "x2"):  # two more failures from this address: five in all
            assert login(app, name, "a-wrong-guess").status_code == 401
        assert login(app, "fay").status_code == 429  # now the address waits
    finally:
        app.stop()


def test_a_hundred_guesses_at_once_are_counted_as_they_arrive(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    users(settings, "add", "gus", "--password-stdin")
    app = AppServer(tmp_path).start()  # the defaults: 20 failures from one address

    async def guesses() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=app.base, timeout=120) as http:
            return await asyncio.gather(
                *(
                    http.post("/login", data={"username": f"guess{n}", "password": "wrong"})
                    for n in range(100)
                )
            )

    try:
        codes = [a.status_code for a in asyncio.run(guesses())]
        assert codes.count(401) <= 20 and codes.count(401) + codes.count(429) == 100
    finally:
        app.stop()


async def test_the_throttle_counts_failures_in_a_sliding_window(store: ChatDataLayer) -> None:
    now = [1000.0]
    throttle = LoginThrottle(store.db, 2, 4, window=60, clock=lambda: now[0])
    assert await throttle.admit("ada", "10.0.0.1") is None
    now[0] += 10
    assert await throttle.admit("ada", "10.0.0.1") is None
    assert await throttle.admit("ada", "10.0.0.1") == pytest.approx(50)
    assert await throttle.admit("bob", "10.0.0.2") is None
    now[0] += 50.5  # the first failure left the window
    assert await throttle.admit("ada", "10.0.0.1") is None
    await throttle.succeeded("ada", "10.0.0.1")  # the right password: that try is taken back
    assert await throttle.admit("ada", "10.0.0.9") is None
    assert await throttle.admit("cyd", "10.0.0.1") is None  # two in the window from it
    assert await throttle.admit("dee", "10.0.0.1") is None  # three
    assert await throttle.admit("eve", "10.0.0.1") is None  # four
    assert await throttle.admit("fay", "10.0.0.1") is not None  # the address waits
    typed = await store.db.rows("SELECT who FROM login_failures")
    assert typed and not any("ada" in row.who or "10.0.0" in row.who for row in typed)


async def test_workers_count_one_accounts_tries_together_even_at_once(
    store: ChatDataLayer,
) -> None:
    """Two workers (each its own throttle and connections) and 60 tries at once for one
    account: exactly the limit get through, however the tries are spread."""
    other = Database(store.db.url)
    try:
        workers = [LoginThrottle(db, 7, 1000, window=300) for db in (store.db, other)]
        waits = await asyncio.gather(
            *(workers[n % 2].admit("ada", f"10.0.0.{n}") for n in range(60))
        )
        assert waits.count(None) == 7
    finally:
        await other.close()


async def test_argon2_checks_run_one_at_a_time_and_a_flood_is_turned_away() -> None:
    passwords = Passwords(queue=3)
    stored = passwords.hash("right-password")
    running = 0
    most = 0
    real = passwords.verify

    def counting(stored_hash: str | None, password: str) -> bool:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            return real(stored_hash, password)
        finally:
            running -= 1

    passwords.verify = counting  # type: ignore[method-assign]
    results = await asyncio.gather(
        *(passwords.averify(stored, "right-password") for _ in range(6)), return_exceptions=True
    )
    assert results.count(True) == 3 and most == 1
    assert sum(isinstance(r, LoginBusy) for r in results) == 3
    assert await passwords.averify(stored, "right-password")  # the flood over, logins go on
