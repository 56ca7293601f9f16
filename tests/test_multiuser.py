"""Password mode on a real server: each user sees and opens only their own threads,
through every REST route and the socket."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import socketio
from chainlit.element import CustomElement, File, Text
from chainlit.types import Feedback
from chainlit.user import User

from chatllm.auth import Passwords
from chatllm.cli import main as cli
from chatllm.config import Settings
from chatllm.engine.tokens import record_dtype
from chatllm.store import ChatDataLayer, Database, FileStore
from chatllm.xray.records import TokenRecords
from tests.support import AppServer, BrowserTab, SocketUser, split_base

#: Two tokens of a reply as the engine records them, "secret" among the pieces.
SECRET_TOKENS = TokenRecords(
    2,
    np.array(
        [(5, -0.1, 1.2, [5, 6], [-0.1, -2.5]), (6, -0.3, 0.9, [6, 5], [-0.3, -1.4])],
        dtype=record_dtype(2),
    ),
    {5: b"secret", 6: b" plan"},
)

PASSWORDS = {"ada": "ada-password-1", "bob": "bob-password-2"}
#: The system prompt in Ada's settings: never shown to anyone she shares the thread with.
SECRET_PROMPT = "You are Ada's planner; keep the plan secret."


def origin(base: str) -> str:
    """The scheme and host of the app's address, for the URLs its pages name (which carry
    the root path the app is served under already)."""
    return split_base(base)[0]


def add_user(settings: Settings, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORDS[name] + "\n"))
    assert cli(["users", "add", name, "--password-stdin"], settings=settings) == 0


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server_settings(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """The served app's settings: its data directory, and its database (SQLite there, or
    a database of its own on the test PostgreSQL server). Every test below runs on both."""
    data_dir = tmp_path_factory.mktemp(f"multiuser-{request.param}")
    database_url = None
    if request.param == "postgresql":
        database_url = request.getfixturevalue("postgres").new_database()
    return Settings(_env_file=None, data_dir=data_dir, database_url=database_url)  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def server_dir(server_settings: Settings) -> Path:
    return server_settings.data_dir


@pytest.fixture(scope="module")
def seeded(server_settings: Settings, server_dir: Path) -> dict[str, str]:
    """Two users; Ada has a thread with messages and a stored file."""
    settings = server_settings
    monkeypatch = pytest.MonkeyPatch()
    for name in PASSWORDS:
        add_user(settings, name, monkeypatch)
    monkeypatch.undo()

    async def seed() -> dict[str, str]:
        layer = ChatDataLayer(Database(settings.database), FileStore(server_dir / "files"))
        ada = await layer.create_user(User(identifier="ada"))
        assert ada is not None
        await layer.update_thread("ada-thread", name="Ada's plans", user_id=ada.id)
        receipt_metadata = {
            "finish_reason": "stop",
            "receipt": {"sampling": {"temperature": 0.7, "system_prompt": SECRET_PROMPT}},
        }
        for n, (kind, text, metadata) in enumerate(
            [
                ("user_message", "my secret plan", {}),
                ("assistant_message", "noted", receipt_metadata),
                ("assistant_message", "Your files are ready.", {"kind": "export"}),
            ]
        ):
            await layer.create_step(
                {
                    "id": f"ada-{n}",
                    "threadId": "ada-thread",
                    "type": kind,  # type: ignore[typeddict-item]
                    "output": text,
                    "createdAt": f"2026-01-01T00:00:0{n}Z",
                    "metadata": metadata,
                }
            )
        tab = BrowserTab()
        tab.enter()
        tab.session.has_first_interaction = True
        element = Text(name="plan.txt", content="the plan", for_id="ada-1", thread_id="ada-thread")
        await layer.create_element(element)
        receipt = CustomElement(
            name="Receipt", props={"seed": 7}, for_id="ada-1", thread_id="ada-thread"
        )
        await layer.create_element(receipt)
        # The Export command's file: the thread's settings, the author's alone.
        export = File(
            name="chat.json",
            content=json.dumps({"chat_settings": {"system_prompt": SECRET_PROMPT}}).encode(),
            mime="application/json",
            for_id="ada-2",
            thread_id="ada-thread",
        )
        await layer.create_element(export)
        feedback = await layer.upsert_feedback(Feedback(forId="ada-1", value=1, comment="ada's"))
        # The reply's token records (its X-ray's), as the app stores them with a reply.
        await layer.db.execute(
            "INSERT INTO token_records (step_id, thread_id, data) VALUES (:s, :t, :d)",
            {"s": "ada-1", "t": "ada-thread", "d": SECRET_TOKENS.pack()},
        )
        await layer.close()
        return {
            "thread": "ada-thread",
            "element": element.id,
            "receipt": receipt.id,
            "export": export.id,
            "feedback": feedback,
        }

    return asyncio.run(seed())


@pytest.fixture(scope="module")
def server(server_settings: Settings, seeded: dict[str, str]) -> Iterator[str]:
    """The app's address: on SQLite at the root, on PostgreSQL under a root path
    (`chainlit run --root-path /chat`), so every test here runs both ways."""
    env = {}
    root_path = ""
    if server_settings.database_url:
        env["CHATLLM_DATABASE_URL"] = server_settings.database_url
        root_path = "/chat"
    app = AppServer(server_settings.data_dir, env=env, root_path=root_path).start()
    yield app.base
    app.stop()


def login(base: str, name: str, password: str | None = None) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=30)
    response = client.post(
        "/login", data={"username": name, "password": password or PASSWORDS[name]}
    )
    response.raise_for_status()
    return client


def test_the_login_page_is_shown_and_only_passwords_are_accepted(server: str) -> None:
    config = httpx.get(server + "/auth/config").json()
    assert config["requireLogin"] and config["passwordAuth"] and not config["headerAuth"]
    assert httpx.post(server + "/auth/header").status_code == 400  # no local-user fallback
    wrong = httpx.post(server + "/login", data={"username": "ada", "password": "guess"})
    unknown = httpx.post(server + "/login", data={"username": "eve", "password": "guess"})
    assert wrong.status_code == unknown.status_code == 401
    assert "access_token" not in wrong.cookies and "access_token" not in unknown.cookies
    assert httpx.get(server + "/project/thread/ada-thread").status_code == 401


def test_the_author_opens_her_thread_and_its_file(server: str, seeded: dict[str, str]) -> None:
    ada = login(server, "ada")
    thread = ada.get(f"/project/thread/{seeded['thread']}").json()
    assert [s["output"] for s in thread["steps"]] == [
        "my secret plan",
        "noted",
        "Your files are ready.",
    ]
    listed = ada.post("/project/threads", json={"pagination": {"first": 20}, "filter": {}})
    assert [t["id"] for t in listed.json()["data"]] == [seeded["thread"]]
    element = ada.get(f"/project/thread/{seeded['thread']}/element/{seeded['element']}").json()
    file = ada.get(origin(server) + element["url"])
    assert file.status_code == 200 and file.text == "the plan"
    # Her reply's X-ray: its tokens, read apart from the thread, hers alone.
    xray = ada.get(f"/chatllm/xray/{seeded['thread']}/ada-1")
    assert xray.status_code == 200, xray.text
    assert xray.json() == SECRET_TOKENS.view()
    assert ada.get(f"/chatllm/xray/{seeded['thread']}/ada-0").status_code == 404  # none kept


def test_another_user_gets_nothing_of_it_through_any_route(
    server: str, seeded: dict[str, str]
) -> None:
    bob = login(server, "bob")
    thread, element = seeded["thread"], seeded["element"]
    refused = [
        bob.get(f"/project/thread/{thread}"),
        bob.put("/project/thread", json={"threadId": thread, "name": "mine now"}),
        bob.request("DELETE", "/project/thread", json={"threadId": thread}),
        bob.put("/project/thread/share", json={"threadId": thread, "isShared": True}),
        bob.get(f"/project/thread/{thread}/element/{element}"),
        bob.get(f"/chatllm/elements/{thread}/{element}"),
        bob.get(f"/chatllm/xray/{thread}/ada-1"),
        bob.get(f"/project/share/{thread}"),
    ]
    for response in refused:
        assert response.status_code in (401, 403, 404), (response.request.url, response.text)
        assert "secret plan" not in response.text and "the plan" not in response.text
        assert "736563726574" not in response.text  # "secret", a token's piece in hex
    listed = bob.post("/project/threads", json={"pagination": {"first": 20}, "filter": {}})
    assert listed.json()["data"] == []
    searched = bob.post(
        "/project/threads",
        json={"pagination": {"first": 20}, "filter": {"search": "secret", "userId": "x"}},
    )
    assert searched.json()["data"] == []
    still = login(server, "ada").get(f"/project/thread/{thread}").json()
    assert still["name"] == "Ada's plans" and len(still["steps"]) == 3


async def test_another_user_cannot_change_or_remove_her_feedback_or_elements(
    server: str, seeded: dict[str, str], server_settings: Settings, server_dir: Path
) -> None:
    settings = server_settings
    layer = ChatDataLayer(Database(settings.database), FileStore(server_dir / "files"))
    bob_user = await layer.get_user("bob") or await layer.create_user(User(identifier="bob"))
    assert bob_user is not None
    await layer.update_thread("bob-thread", name="Bob's", user_id=bob_user.id)
    await layer.create_step(
        {
            "id": "bob-0",
            "threadId": "bob-thread",
            "type": "assistant_message",
            "output": "hi bob",
            "createdAt": "2026-01-01T00:00:00Z",
            "metadata": {"finish_reason": "stop"},
        }
    )
    await layer.close()
    bob_cookies = login(server, "bob").cookies
    bob_tab = SocketUser(server, thread_id="bob-thread")
    await bob_tab.connect(bob_cookies, start=False)  # his own session, as the page has
    bob = login(server, "bob")
    feedback, receipt = seeded["feedback"], seeded["receipt"]
    theirs = {"name": "Receipt", "type": "custom", "display": "inline", "props": {"seed": 0}}
    attempts = {
        "feedback on her reply": bob.put(
            "/feedback",
            json={
                "feedback": {"id": feedback, "forId": "ada-1", "value": 0, "comment": "bob's"},
                "sessionId": bob_tab.session_id,
            },
        ),
        "her feedback moved to his reply": bob.put(
            "/feedback",
            json={
                "feedback": {"id": feedback, "forId": "bob-0", "value": 0, "comment": "bob's"},
                "sessionId": bob_tab.session_id,
            },
        ),
        "her feedback deleted": bob.request("DELETE", "/feedback", json={"feedbackId": feedback}),
        "her receipt overwritten through his session": bob.put(
            "/project/element",
            json={
                "element": {**theirs, "id": receipt, "threadId": ""},
                "sessionId": bob_tab.session_id,
            },
        ),
        "her receipt deleted": bob.request(
            "DELETE",
            "/project/element",
            json={
                "element": {**theirs, "id": receipt, "threadId": "ada-thread"},
                "sessionId": bob_tab.session_id,
            },
        ),
    }
    for what, response in attempts.items():
        assert response.status_code == 403, (what, response.text)
    unknown = bob.put(
        "/feedback",
        json={"feedback": {"forId": "no-such-step", "value": 1}, "sessionId": bob_tab.session_id},
    )
    assert unknown.status_code == 404 and "SELECT" not in unknown.text
    own = bob.put(
        "/feedback",
        json={"feedback": {"forId": "bob-0", "value": 1}, "sessionId": bob_tab.session_id},
    )
    assert own.status_code == 200  # his own reply takes his feedback
    await bob_tab.client.disconnect()
    thread = login(server, "ada").get(f"/project/thread/{seeded['thread']}").json()
    (reply,) = [s for s in thread["steps"] if s["id"] == "ada-1"]
    assert reply["feedback"]["value"] == 1 and reply["feedback"]["comment"] == "ada's"
    (kept,) = [e for e in thread["elements"] if e["id"] == receipt]
    assert kept["props"] == {"seed": 7}


def test_a_shared_thread_is_read_only_to_other_signed_in_users_until_unshared(
    server: str, seeded: dict[str, str]
) -> None:
    """The default (CHATLLM_SHARING=users): Ada shares her thread, and Bob, signed in,
    opens it through the share route alone: its messages, receipt and file, none of its
    settings nor her feedback; he can neither change it nor share it. Unshared, it is
    gone again for him; nobody signed out gets it at any time."""
    ada, bob = login(server, "ada"), login(server, "bob")
    thread, element = seeded["thread"], seeded["element"]
    share = {"threadId": thread, "isShared": True}
    assert bob.put("/project/thread/share", json=share).status_code == 403  # not his
    assert ada.put("/project/thread/share", json=share).status_code == 200
    try:
        seen = bob.get(f"/project/share/{thread}")
        assert seen.status_code == 200
        view = seen.json()
        # The conversation alone: not the Export command's message, nor its file (the
        # thread's settings), nor the system prompt its receipt recorded.
        assert [s["output"] for s in view["steps"]] == ["my secret plan", "noted"]
        assert set(view["metadata"]) == {"is_shared", "shared_at"}  # no settings, no session
        assert SECRET_PROMPT not in seen.text
        assert view["steps"][1]["metadata"]["receipt"]["sampling"] == {"temperature": 0.7}
        assert seeded["export"] not in seen.text
        export_url = f"/chatllm/elements/{thread}/{seeded['export']}"
        assert bob.get(export_url).status_code == 404
        assert ada.get(export_url).status_code == 200  # the author's own
        assert all("feedback" not in s for s in view["steps"])
        assert "ada's" not in seen.text  # her feedback's comment
        receipt = next(e for e in view["elements"] if e["id"] == seeded["receipt"])
        assert receipt["props"] == {"seed": 7}
        file = next(e for e in view["elements"] if e["id"] == element)
        assert bob.get(origin(server) + file["url"]).text == "the plan"
        # Read-only: the thread's own routes stay hers.
        refused = [
            bob.get(f"/project/thread/{thread}"),
            bob.put("/project/thread", json={"threadId": thread, "name": "mine now"}),
            bob.request("DELETE", "/project/thread", json={"threadId": thread}),
            bob.put(
                "/feedback", json={"feedback": {"forId": "ada-1", "value": 0}, "sessionId": ""}
            ),
            bob.put("/project/thread/share", json={"threadId": thread, "isShared": False}),
        ]
        # (Chainlit's own thread routes answer another user with a 401, the app's a 403.)
        assert [r.status_code for r in refused] == [401, 403, 401, 403, 403]
        anonymous = httpx.get(f"{server}/project/share/{thread}")
        assert anonymous.status_code == 401 and "secret plan" not in anonymous.text
        assert bob.get("/project/share/no-such-thread").status_code == 404
    finally:
        unshare = {"threadId": thread, "isShared": False}
        assert ada.put("/project/thread/share", json=unshare).status_code == 200
    gone = bob.get(f"/project/share/{thread}")
    assert gone.status_code == 404 and "secret plan" not in gone.text
    assert bob.get(origin(server) + file["url"]).status_code == 403
    metadata = ada.get(f"/project/thread/{thread}").json()["metadata"]
    assert metadata["is_shared"] is False and "chat_settings" not in seen.text


async def test_another_user_cannot_resume_it_over_the_socket(
    server: str, seeded: dict[str, str]
) -> None:
    async def connect(name: str) -> SocketUser:
        user = SocketUser(server, thread_id=seeded["thread"])
        await user.connect(login(server, name).cookies, start=False)
        return user

    with pytest.raises(socketio.exceptions.ConnectionError):
        await connect("bob")
    ada = await connect("ada")  # the author may
    await ada.client.disconnect()


def test_an_unknown_user_and_a_wrong_password_cost_the_same_argon2_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    passwords = Passwords()
    stored = passwords.hash("right-password")
    verified: list[str] = []
    real = passwords._hasher

    class Counting:
        def verify(self, hash_: str, password: str) -> bool:
            verified.append(hash_.split("$")[3])  # the Argon2 parameters: m, t, p
            return real.verify(hash_, password)

    monkeypatch.setattr(passwords, "_hasher", Counting())
    assert passwords.verify(stored, "wrong") is False
    assert passwords.verify(None, "wrong") is False  # no such user
    assert passwords.verify(stored, "right-password") is True
    assert len(verified) == 3 and len(set(verified)) == 1


def test_the_auth_secret_is_generated_once_for_its_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chatllm.auth import AUTH_SECRET_ENV, ensure_auth_secret

    monkeypatch.delenv(AUTH_SECRET_ENV, raising=False)
    ensure_auth_secret(tmp_path)
    secret = os.environ[AUTH_SECRET_ENV]
    path = tmp_path / ".auth_secret"
    assert path.read_text() == secret and len(secret) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    monkeypatch.delenv(AUTH_SECRET_ENV)
    ensure_auth_secret(tmp_path)
    assert os.environ[AUTH_SECRET_ENV] == secret  # the same one after a restart
    monkeypatch.setenv(AUTH_SECRET_ENV, "from-the-environment-" * 3)
    ensure_auth_secret(tmp_path)
    assert os.environ[AUTH_SECRET_ENV] == "from-the-environment-" * 3


def test_workers_starting_together_on_one_data_directory_share_one_secret(
    tmp_path: Path,
) -> None:
    """Workers behind a load balancer must sign and accept the same cookies."""
    script = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from chatllm.auth import AUTH_SECRET_ENV, ensure_auth_secret\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all at once\n"
        "ensure_auth_secret(Path(sys.argv[1]))\n"
        "print(os.environ[AUTH_SECRET_ENV])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CHAINLIT_AUTH_SECRET"}
    at = str(time.time() + 3)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path), at],
            stdout=subprocess.PIPE,
            env=env,
        )
        for _ in range(8)
    ]
    secrets = {worker.communicate(timeout=60)[0].decode().strip() for worker in workers}
    assert all(worker.returncode == 0 for worker in workers)
    assert secrets == {(tmp_path / ".auth_secret").read_text()}
    assert [p.name for p in tmp_path.iterdir()] == [".auth_secret"]  # no partial file left


def adas_thread(settings: Settings, files: Path, thread_id: str, name: str) -> None:
    """A thread of Ada's, named `name`, written into the served app's database."""

    async def seed() -> None:
        layer = ChatDataLayer(Database(settings.database), FileStore(files / "files"))
        ada = await layer.get_user("ada")
        assert ada is not None
        await layer.update_thread(thread_id, name=name, user_id=ada.id)
        await layer.close()

    asyncio.run(seed())


def test_the_author_renames_and_deletes_her_own_threads(
    server: str, server_settings: Settings, server_dir: Path
) -> None:
    adas_thread(server_settings, server_dir, "ada-scratch", "scratch")
    ada = login(server, "ada")
    renamed = ada.put("/project/thread", json={"threadId": "ada-scratch", "name": "改名 renamed"})
    assert renamed.status_code == 200
    assert ada.get("/project/thread/ada-scratch").json()["name"] == "改名 renamed"
    found = ada.post(
        "/project/threads", json={"pagination": {"first": 20}, "filter": {"search": "改名"}}
    )
    assert [t["id"] for t in found.json()["data"]] == ["ada-scratch"]
    deleted = ada.request("DELETE", "/project/thread", json={"threadId": "ada-scratch"})
    assert deleted.status_code == 200
    assert ada.get("/project/thread/ada-scratch").status_code == 404


def test_a_name_of_blanks_is_refused_in_words_and_a_name_is_trimmed_and_capped(
    server: str, server_settings: Settings, server_dir: Path
) -> None:
    adas_thread(server_settings, server_dir, "ada-named", "named")
    ada = login(server, "ada")
    for blank in ("   ", "", "\t\n ", "\u3000\u200b"):  # an ideographic space, a zero-width one
        refused = ada.put("/project/thread", json={"threadId": "ada-named", "name": blank})
        assert refused.status_code == 400, refused.text
        assert refused.json()["detail"].startswith("A conversation needs a name")
    chinese = ada.put(
        "/project/thread",
        json={"threadId": "ada-named", "name": " "},
        headers={"Accept-Language": "zh-TW,zh;q=0.9"},
    )
    assert chinese.json()["detail"].startswith("對話需要名稱")
    assert ada.get("/project/thread/ada-named").json()["name"] == "named"
    ada.put("/project/thread", json={"threadId": "ada-named", "name": "  燈塔 plans \n"})
    assert ada.get("/project/thread/ada-named").json()["name"] == "燈塔 plans"
    ada.put("/project/thread", json={"threadId": "ada-named", "name": " " + "x" * 300})
    assert ada.get("/project/thread/ada-named").json()["name"] == "x" * 255
    bob = login(server, "bob")
    for name in ("mine now", "   "):  # another user's thread: refused, however named
        taken = bob.put("/project/thread", json={"threadId": "ada-named", "name": name})
        assert taken.status_code in (401, 403), taken.text
    assert ada.get("/project/thread/ada-named").json()["name"] == "x" * 255
