"""Starting the app the way the README does."""

from __future__ import annotations

import http.cookiejar
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.support import AppServer, free_port

ROOT = Path(__file__).resolve().parent.parent
CHAINLIT = str(Path(sys.executable).with_name("chainlit"))


def app_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATLLM_")}
    return {**env, "CHATLLM_DATA_DIR": str(tmp_path), **extra}


def start_expecting_refusal(
    tmp_path: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """Start the app as the README does; it must exit on its own."""
    return subprocess.run(
        [CHAINLIT, "run", "app.py", "--headless", "--port", str(free_port()), *args],
        cwd=ROOT,
        env=app_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_missing_model_file_stops_start_up_naming_path_and_setting(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "absent.gguf"
    result = start_expecting_refusal(tmp_path, CHATLLM_MODEL_PATH=str(missing))
    assert result.returncode != 0
    assert str(missing) in result.stderr
    assert "CHATLLM_MODEL_PATH" in result.stderr


def test_a_file_that_is_not_a_model_stops_start_up(tmp_path: Path) -> None:
    fake = tmp_path / "notes.gguf"
    fake.write_text("not a model")
    result = start_expecting_refusal(tmp_path, CHATLLM_MODEL_PATH=str(fake))
    assert result.returncode == 2
    assert "chatllm cannot start" in result.stderr
    assert str(fake) in result.stderr and "CHATLLM_MODEL_PATH" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_malformed_setting_is_named(tmp_path: Path) -> None:
    result = start_expecting_refusal(tmp_path, CHATLLM_N_CTX="lots")
    assert result.returncode == 2
    assert "CHATLLM_N_CTX" in result.stderr and "Traceback" not in result.stderr


def test_a_worker_with_neither_the_local_model_nor_an_endpoint_is_refused(tmp_path: Path) -> None:
    result = start_expecting_refusal(tmp_path, CHATLLM_LOCAL_BACKEND="false")
    assert result.returncode == 2
    assert "CHATLLM_LOCAL_BACKEND" in result.stderr and "CHATLLM_OPENAI_BASE_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_serving_beyond_this_machine_without_users_is_refused(tmp_path: Path) -> None:
    result = start_expecting_refusal(tmp_path, "--host", "0.0.0.0")
    assert result.returncode == 2
    assert "0.0.0.0" in result.stderr and "users add" in result.stderr


def test_the_app_serves_its_welcome_page_in_english_and_chinese(tmp_path: Path) -> None:
    server = AppServer(tmp_path).start()
    try:
        base = server.base
        with urllib.request.urlopen(base) as page:
            assert b"<title>chatllm</title>" in page.read()

        # Local mode: no login page; the browser signs in through the header route.
        browser = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        with urllib.request.urlopen(f"{base}/auth/config") as r:
            auth = json.load(r)
        assert auth["headerAuth"] and not auth["passwordAuth"]
        browser.open(urllib.request.Request(f"{base}/auth/header", method="POST", data=b""))

        threads = browser.open(
            urllib.request.Request(
                f"{base}/project/threads",
                method="POST",
                data=json.dumps({"pagination": {"first": 20}, "filter": {}}).encode(),
                headers={"Content-Type": "application/json"},
            )
        )
        assert json.load(threads)["data"] == []  # history works for the local user

        def project(language: str) -> dict[str, object]:
            with browser.open(f"{base}/project/settings?language={language}") as r:
                return json.load(r)  # type: ignore[no-any-return]

        assert str(project("en-US")["markdown"]).startswith("# Welcome to chatllm")
        assert str(project("zh-TW")["markdown"]).startswith("# 歡迎使用 chatllm")
        assert str(project("zh-CN")["markdown"]).startswith("# 欢迎使用 chatllm")
        profiles = project("zh-CN")["chatProfiles"]
        assert isinstance(profiles, list)
        assert profiles[0]["display_name"] == "本地 · SmolLM2-135M-Instruct"
        for asset in ("/logo?theme=light", "/logo?theme=dark", "/favicon"):
            with urllib.request.urlopen(base + asset) as r:
                assert r.headers["content-type"].startswith("image/svg")
    finally:
        server.stop()


def test_what_runs_before_the_first_page_loads_neither_langchain_nor_the_model_client(
    tmp_path: Path,
) -> None:
    """app.py builds only what the first page needs; the chat (LangChain, the backends,
    the openai client, llama.cpp's engine) is loaded once the server is up, so the first
    page does not wait for it (bench/startup.py)."""
    probe = (
        "import sys, chainlit.server, app; "
        "print(sorted(m for m in ('langchain_core', 'openai', 'chatllm.chat.app', "
        "'chatllm.backends', 'llama_cpp') if m in sys.modules)); "
        "print(app.services.auth_mode, app.services.store is not None)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=app_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    loaded, ready = result.stdout.splitlines()[-2:]
    assert loaded == "[]", result.stdout
    assert ready == "local True"
