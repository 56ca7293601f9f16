from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

# Chainlit reads .chainlit/ and chainlit.md relative to the working directory.
ROOT = Path(__file__).resolve().parent.parent
os.chdir(ROOT)

from chatllm.backends.local import LocalBackend  # noqa: E402
from chatllm.chat import ChatApp  # noqa: E402
from chatllm.config import Settings, embedded_model_path  # noqa: E402
from chatllm.store import ChatDataLayer, Database, FileStore  # noqa: E402
from deploy.postgres import PostgresServer  # noqa: E402
from tests.support import Endpoint, WireTap  # noqa: E402


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The app's settings for tests: defaults, no .env, a fresh data directory."""
    return Settings(_env_file=None, data_dir=tmp_path_factory.mktemp("data"))  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def local(settings: Settings) -> LocalBackend:
    return LocalBackend(settings)


@pytest.fixture(scope="session")
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint(model_path=embedded_model_path())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def tap(endpoint: Endpoint) -> Iterator[WireTap]:
    """The real endpoint behind a wire tap, which sees each request as it arrives."""
    proxy = WireTap(endpoint.base_url.removesuffix("/v1")).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def endpoint_settings(endpoint: Endpoint, tmp_path: Path) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        data_dir=tmp_path,
        openai_base_url=endpoint.base_url,
        openai_api_key=endpoint.api_key,
        openai_timeout=30,
        openai_max_retries=0,
    )


def url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
async def app(settings: Settings) -> ChatApp:
    chat = ChatApp(settings)
    await chat.prepare("127.0.0.1")
    return chat


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server on loopback, for the whole run; each test that asks for
    one gets a database of its own (`database_url`)."""
    server = PostgresServer().start()
    yield server
    server.stop()


#: Run a test on SQLite only (it is about SQLite's file, locks or URIs).
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
postgresql_only = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: an SQLite file in the test's temp dir, or a new database on the
    test PostgreSQL server. Each test asking for it (or for `store`) runs on both."""
    if request.param == "sqlite":
        return url(tmp_path / "chatllm.db")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


@pytest.fixture
async def store(database_url: str, tmp_path: Path) -> AsyncIterator[ChatDataLayer]:
    db = Database(database_url)
    await db.migrate()
    layer = ChatDataLayer(db, FileStore(tmp_path / "files"))
    yield layer
    await layer.close()
