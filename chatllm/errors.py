"""Narrow exception types. Each is turned into plain words once, at the Chainlit hook."""

from __future__ import annotations

from typing import ClassVar


class ChatLLMError(Exception):
    """Base of every error this app raises on purpose."""


class Worded(ChatLLMError):
    """An error whose words are the catalogue's (chatllm.i18n) `key`, filled in with its
    values: English in `str()` (logs, the command line), the user's language from
    `describe`, so both say the same."""

    key: ClassVar[str]

    def __init__(self, **values: object) -> None:
        from chatllm.i18n import t

        self.values = values
        super().__init__(t(self.key, "en", **values))


class Problem(str):
    """One refused value, as `Worded` words: English as a string (logs, a sweep's
    refusal), and the catalogue's `key` and `values` for the user's language."""

    key: str
    values: dict[str, object]

    def __new__(cls, key: str, **values: object) -> Problem:
        from chatllm.i18n import t

        problem = super().__new__(cls, t(key, "en", **values))
        problem.key, problem.values = key, values
        return problem


class ConfigError(ChatLLMError):
    """The settings cannot work (a missing model file, an unsafe combination)."""


class InvalidSampling(ChatLLMError):
    """A slider value arrived out of range or malformed; a problem is a `Problem` where
    the catalogue has its words."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class StoreError(ChatLLMError):
    """A write to the database failed; nothing of it was kept."""


class ThreadDeleted(ChatLLMError):
    """A write aimed at a thread its owner has deleted: it is not brought back."""


class PresetError(ChatLLMError):
    """A preset name or values that cannot be saved."""


class PresetRefused(Worded, PresetError):
    """A preset not saved, in the catalogue's words (each kind its own key)."""


class PresetNameMissing(PresetRefused):
    key = "preset.problem.no_name"


class PresetNameTooLong(PresetRefused):
    key = "preset.problem.too_long"


class PresetNameNotText(PresetRefused):
    key = "preset.problem.not_text"


class PresetsNeedUser(PresetRefused):
    key = "preset.problem.no_user"


class TooManyPresets(PresetRefused):
    key = "preset.problem.too_many"


class BackendError(ChatLLMError):
    """The model backend could not produce a reply."""


class BackendUnreachable(BackendError):
    """The endpoint refused the connection or could not be reached."""

    def __init__(self, url: str, detail: str) -> None:
        self.url = url
        self.detail = detail
        super().__init__(f"cannot reach {url}: {detail}")


class BackendTimeout(BackendError):
    """The endpoint did not answer within the request timeout."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"no answer within {seconds:g} s")


class BackendAuthError(BackendError):
    """The endpoint rejected the API key (HTTP 401/403)."""

    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(f"the endpoint refused the API key (HTTP {status})")


class EndpointNotFound(BackendError):
    """The endpoint answered 404 for a route it should have (a base URL missing /v1?)."""

    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__(f"{url} answered 404 Not Found")


class UnknownModel(BackendError):
    """The endpoint does not serve the requested model."""

    def __init__(self, model: str) -> None:
        self.model = model
        super().__init__(f"the endpoint does not serve {model!r}")


class ContextOverflow(BackendError):
    """The message does not fit the model's context, even with all history dropped.

    `needed`: the prompt's tokens (system prompt and message); `available`: the room for
    them, the context less what the reply is given; `context`: the whole context, where
    it is known apart from `available` (otherwise `available` is the whole context)."""

    def __init__(
        self, needed: int | None = None, available: int | None = None, context: int | None = None
    ) -> None:
        self.needed = needed
        self.available = available
        self.context = context
        if needed is None or available is None:
            super().__init__("the message does not fit the model's context")
        else:
            super().__init__(f"needs {needed} tokens, the context has room for {available}")


class EngineUnavailable(BackendError):
    """The local engine could not be started, or failed its start-up self-check."""

    def __init__(self, detail: str, cause: str = "start") -> None:
        self.detail = detail
        self.cause = cause
        super().__init__(f"the local model is unavailable: {detail}")


class EngineCrashed(BackendError):
    """The local engine process ended in the middle of a request (a crash, a kill)."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"the local model's engine {detail}")


class EngineHung(BackendError):
    """The local engine gave no sign of life in time, and was killed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"the local model's engine gave no sign of life for {seconds:g} s")


def describe(exc: BaseException, lang: str | None = None) -> str:
    """Plain words for the user; the one place errors become text."""
    from chatllm.i18n import t

    if isinstance(exc, Worded):
        return t(exc.key, lang, **exc.values)
    if isinstance(exc, BackendUnreachable):
        return t("error.unreachable", lang, url=exc.url, detail=exc.detail)
    if isinstance(exc, BackendTimeout):
        return t("error.timeout", lang, seconds=exc.seconds)
    if isinstance(exc, BackendAuthError):
        return t("error.auth", lang, status=exc.status)
    if isinstance(exc, EndpointNotFound):
        return t("error.not_found", lang, url=exc.url)
    if isinstance(exc, UnknownModel):
        return t("error.unknown_model", lang, model=exc.model)
    if isinstance(exc, ContextOverflow):
        if exc.needed is None or exc.available is None:
            return t("error.context.unknown", lang)
        context = exc.available if exc.context is None else exc.context
        if exc.needed >= context:  # no reply, however short, makes room
            return t("error.context.whole", lang, needed=exc.needed, context=context)
        return t(
            "error.context",
            lang,
            needed=exc.needed,
            context=context,
            reserved=context - exc.available,
            available=exc.available,
            most=context - exc.needed,
        )
    if isinstance(exc, EngineCrashed):
        return t("error.engine_crashed", lang, detail=exc.detail)
    if isinstance(exc, EngineHung):
        return t("error.engine_hung", lang, seconds=exc.seconds)
    if isinstance(exc, EngineUnavailable):
        return t("error.engine_unavailable", lang, detail=exc.detail)
    if isinstance(exc, StoreError):
        return t("error.store", lang, detail=str(exc))
    if isinstance(exc, ThreadDeleted):
        return t("error.thread_deleted", lang)
    if isinstance(exc, InvalidSampling):
        problems = (
            t(p.key, lang, **_named(p, lang)) if isinstance(p, Problem) else p for p in exc.problems
        )
        return t("settings.refused", lang, problems=t("settings.separator", lang).join(problems))
    if isinstance(exc, BackendError):
        return t("error.backend", lang, detail=str(exc))
    if isinstance(exc, ChatLLMError):
        text = str(exc).strip()
        return (text[:1].upper() + text[1:]).rstrip(".") + "." if text else type(exc).__name__
    return t("error.unexpected", lang, kind=type(exc).__name__)


def _named(problem: Problem, lang: str | None) -> dict[str, object]:
    """A problem's values with the setting it names as the panel labels it; an unknown
    one (a forged client's key) stays as it came."""
    from chatllm.i18n import t

    setting = problem.values.get("setting")
    if isinstance(setting, str) and problem.key != "settings.problem.unknown":
        return {**problem.values, "setting": t(setting, lang)}
    return problem.values
