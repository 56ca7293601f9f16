"""Settings: read from the environment, refuse what cannot work, find the embedded model."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatllm.config import Settings, embedded_model_path
from chatllm.errors import ConfigError


def test_embedded_model_is_found_inside_the_installed_package() -> None:
    path = embedded_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "site-packages" in path.parts  # inside the installed wheel, not downloaded
    with path.open("rb") as gguf:
        assert gguf.read(4) == b"GGUF"


def test_no_model_path_means_the_embedded_model() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.resolve_model_path() == embedded_model_path()
    assert settings.local_model_name == "SmolLM2-135M-Instruct"


def test_a_missing_gguf_path_names_the_path_and_the_setting(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    settings = Settings(_env_file=None, model_path=missing)  # type: ignore[call-arg]
    with pytest.raises(ConfigError) as refused:
        settings.resolve_model_path()
    assert str(missing) in str(refused.value)
    assert "CHATLLM_MODEL_PATH" in str(refused.value)


def test_settings_come_from_the_environment_and_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text(
        "CHATLLM_OPENAI_BASE_URL=http://127.0.0.1:9/v1/\nCHATLLM_N_CTX=2048\nCHATLLM_MODEL_PATH=\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHATLLM_N_CTX", "1024")
    monkeypatch.setenv("CHATLLM_OPENAI_MODELS", "a, b ,,c")
    monkeypatch.setenv("CHATLLM_OPENAI_API_KEY", "sk-secret")
    settings = Settings()
    assert settings.openai_base_url == "http://127.0.0.1:9/v1"
    assert settings.n_ctx == 1024  # the environment wins over .env
    assert settings.model_path is None  # an empty value means the default
    assert settings.openai_models == ["a", "b", "c"]
    assert "sk-secret" not in repr(settings)


def test_a_base_url_without_a_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        Settings(_env_file=None, openai_base_url="127.0.0.1:8000/v1")  # type: ignore[call-arg]
