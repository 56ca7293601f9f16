"""A page of another origin gets nowhere: not the user's threads, not their socket, not a
token through a DNS name rebound to 127.0.0.1. The app on a real server, a real browser
where the browser's own rules matter."""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import sync_playwright

from tests.support import AppServer, free_port, socket_connects
from tests.test_browser import CHROMIUM, open_browser, ready

ALLOWED = "http://allowed.example"  # an origin the operator lets in


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    server = AppServer(
        tmp_path_factory.mktemp("origins"), env={"CHATLLM_ALLOWED_ORIGINS": ALLOWED}
    ).start()
    yield server
    server.stop()


def cookies(app: AppServer) -> httpx.Cookies:
    """The local user's session, as the app's own page gets it."""
    answer = httpx.post(app.base + "/auth/header", timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.cookies


def list_threads(app: AppServer, origin: str | None) -> httpx.Response:
    headers = {"Origin": origin} if origin else {}
    return httpx.post(
        app.base + "/project/threads",
        json={"pagination": {"first": 20}, "filter": {}},
        headers=headers,
        cookies=cookies(app),
        timeout=30,
    )


def test_another_origin_is_refused_and_gets_no_cors_grant(app: AppServer) -> None:
    other = f"http://127.0.0.1:{free_port()}"  # another port of the same host
    own = list_threads(app, app.base)
    assert own.status_code == 200 and "data" in own.json()
    assert list_threads(app, None).status_code == 200  # no Origin: not a browser's page
    refused = list_threads(app, other)
    assert refused.status_code == 403
    assert "access-control-allow-origin" not in refused.headers
    preflight = httpx.options(
        app.base + "/project/threads",
        headers={"Origin": other, "Access-Control-Request-Method": "POST"},
        timeout=30,
    )
    assert preflight.status_code == 403
    assert "access-control-allow-origin" not in preflight.headers


def test_an_origin_the_operator_allows_gets_credentialed_cors(app: AppServer) -> None:
    allowed = list_threads(app, ALLOWED)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED
    assert allowed.headers["access-control-allow-credentials"] == "true"


async def connects(app: AppServer, origin: str) -> bool:
    cookie = "; ".join(f"{k}={v}" for k, v in cookies(app).items())
    return await socket_connects(app.base, {"Origin": origin, "Cookie": cookie})


async def test_the_socket_refuses_another_origin(app: AppServer) -> None:
    assert await connects(app, app.base)
    assert not await connects(app, f"http://127.0.0.1:{free_port()}")


def test_in_local_mode_a_rebound_host_name_gets_no_token_and_no_page(app: AppServer) -> None:
    rebound = {"Host": "rebind.evil.example"}
    token = httpx.post(app.base + "/auth/header", headers=rebound, timeout=30)
    assert token.status_code == 403 and "access_token" not in token.cookies
    assert httpx.get(app.base + "/", headers=rebound, timeout=30).status_code == 403
    for name in ("localhost", "127.0.0.1"):  # the names the app is served on
        host = {"Host": f"{name}:{app.port}"}
        assert httpx.post(app.base + "/auth/header", headers=host, timeout=30).status_code == 200


EVIL_PAGE = """<!doctype html><title>waiting</title><script>
fetch("%s/project/threads", {method: "POST", credentials: "include",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({pagination: {first: 20}, filter: {}})})
  .then(r => r.text()).then(t => { document.title = "read: " + t; })
  .catch(e => { document.title = "blocked"; });
</script>"""


def test_a_page_on_another_port_cannot_read_the_threads_in_chromium(
    app: AppServer, tmp_path: Path
) -> None:
    """The attack as it was found: the user has the app open (so Chromium holds its
    cookie, sent to every port of the host), then visits another page on the same host."""
    page_dir = tmp_path / "evil"
    page_dir.mkdir()
    (page_dir / "index.html").write_text(EVIL_PAGE % app.base, encoding="utf-8")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(page_dir))  # noqa: E731
    evil = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    assert Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM}: `make test` installs it (apt)"
    try:
        with sync_playwright() as playwright:
            context = open_browser(playwright, tmp_path)
            page = context.new_page()
            page.goto(app.base)
            ready(page)
            # The same request from the app's own page works: the cookie is there.
            own = page.evaluate(
                """async () => (await fetch("/project/threads", {method: "POST",
                    credentials: "include", headers: {"Content-Type": "application/json"},
                    body: JSON.stringify({pagination: {first: 20}, filter: {}})})).status"""
            )
            assert own == 200
            page.goto(f"http://127.0.0.1:{evil.server_port}/index.html")
            page.wait_for_function("document.title !== 'waiting'", timeout=30_000)
            assert page.title() == "blocked"
            context.close()
    finally:
        evil.shutdown()


def test_the_page_loads_nothing_from_another_origin(app: AppServer) -> None:
    """The app works offline and tells no third party who opened it: Chainlit's page asked
    a CDN for KaTeX's stylesheet (which failed offline) and connected to Google's fonts."""
    for path in ("/", "/thread/some-thread", "/login"):
        page = httpx.get(app.base + path, timeout=30)
        assert page.status_code == 200 and '<div id="root">' in page.text
        elsewhere = re.findall(r"""(?:href|src)=["'](https?://[^"']*)""", page.text)
        assert elsewhere == [], (path, elsewhere)
