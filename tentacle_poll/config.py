"""Settings of the agent and the server: a TOML file in the home folder, then environment
variables prefixed ``TENTACLE_POLL_``, then command-line flags on top (highest wins)."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from tentacle_poll.exceptions import ConfigurationError
from tentacle_poll.protocol.codec import describe_validation_error
from tentacle_poll.protocol.models import matching, port_in_range
from tentacle_poll.refusals import address_text
from tentacle_poll.tls.certs import normalised_thumbprint

ENV_PREFIX = "TENTACLE_POLL_"
AGENT_FILE = "agent.toml"
SERVER_FILE = "server.toml"
DEFAULT_COMMS_PORT = 10943
DEFAULT_LISTENING_PORT = 10933
DEFAULT_ADMIN_PORT = 10944

LogFormat = Literal["text", "json"]
LogLevel = Literal["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"]


def default_agent_home() -> Path:
    return Path(os.environ.get(f"{ENV_PREFIX}HOME", Path.home() / ".tentacle_poll")).expanduser()


def default_server_home() -> Path:
    return Path(
        os.environ.get(f"{ENV_PREFIX}SERVER_HOME", Path.home() / ".tentacle_poll_server")
    ).expanduser()


Thumbprint = Annotated[str, BeforeValidator(normalised_thumbprint)]


def given_thumbprint(text: str, what: str) -> str:
    """A thumbprint typed on the command line, normalised, or a ConfigurationError naming
    ``what`` (the flag) and what to do."""
    try:
        return normalised_thumbprint(text)
    except ValueError as exc:
        raise ConfigurationError(f"{what}: {exc}") from None


SERVER_ADDRESS = re.compile(r"[^/\s:]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")


def comms_url(text: str) -> str:
    """The address of a server's comms port as agents need it (``https://HOST:PORT``); a
    ConfigurationError in one line saying what to use instead."""
    text = text.strip().rstrip("/")
    scheme, has_scheme, rest = text.partition("://")
    if not has_scheme:
        scheme, rest = "", text
    if not SERVER_ADDRESS.fullmatch(rest) or (has_scheme and not scheme.isalnum()):
        # checked first: the advice below repeats the address, which must be one
        raise ConfigurationError(
            f"{text!r} is not a server address; use https://HOST:PORT (no path)"
        )
    if not has_scheme:
        raise ConfigurationError(
            f"the server address {text!r} needs its scheme: use https://{text} (the comms port, "
            f"{DEFAULT_COMMS_PORT} by default)"
        )
    if scheme.lower() != "https":
        raise ConfigurationError(
            f"the comms port speaks TLS only: use https://{rest} instead of {scheme}://{rest}"
        )
    return _with_usable_port(f"https://{rest}")


def _with_usable_port(url: str) -> str:
    try:
        return port_in_range(url)
    except ValueError as exc:
        raise ConfigurationError(
            f"{url!r}: {exc} (the comms port is {DEFAULT_COMMS_PORT} by default)"
        ) from None


def admin_url(text: str) -> str:
    """The admin API's address (``http[s]://HOST[:PORT][/PREFIX]``), or a ConfigurationError in
    one line: a malformed one would otherwise read as a server that is down."""
    text = text.strip().rstrip("/")
    problem = _admin_url_problem(text)
    if problem:
        raise ConfigurationError(
            f"the admin API address {text!r} ({ENV_PREFIX}ADMIN_URL or --admin-url) {problem}: "
            f"use http://HOST:PORT (the server's admin port, {DEFAULT_ADMIN_PORT} by default)"
        )
    return text


def _admin_url_problem(text: str) -> str:
    if any(character.isspace() for character in text):
        return "holds a space or a line break"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        return f"is not an address ({exc})"
    if parts.scheme not in ("http", "https"):
        return "needs http:// or https://"
    if not parts.hostname:
        return "names no host"
    return "has port 0" if port == 0 else ""


class ServerNode(BaseModel):
    """One server the agent polls, pinned by its certificate thumbprint(s)."""

    model_config = ConfigDict(extra="forbid")

    url: Annotated[
        str,
        matching(r"^https://[^/\s]+(:\d{1,5})?/?$", "https://HOST[:PORT], with no path"),
        AfterValidator(port_in_range),
    ]
    thumbprint: Thumbprint
    # Also trusted: a rotated server certificate announced over the pinned channel, or one
    # added by `tentacle-poll trust`.
    also_trusted: list[Thumbprint] = []
    # TLS server name (SNI) to send when it differs from the URL's host, e.g. behind a
    # reverse proxy that routes port 443 by name.
    server_name: (
        Annotated[str, matching(r"^[A-Za-z0-9.-]{1,253}$", "a host name: letters, digits, . and -")]
        | None
    ) = None
    # Learnt from a cluster's poll answers rather than configured by hand: dropped again when
    # the cluster stops announcing it (hand-configured nodes are never dropped).
    discovered: bool = False

    @property
    def thumbprints(self) -> list[str]:
        return [self.thumbprint, *(t for t in self.also_trusted if t != self.thumbprint)]


class ListeningSettings(BaseModel):
    """Listening mode: the agent waits on ``host:port`` for its server to connect, and talks
    only to a server presenting one of these thumbprints (docs/listening.md)."""

    model_config = ConfigDict(extra="forbid")

    host: Annotated[
        str, matching(r"^[A-Za-z0-9.:-]{1,253}$", "an address or host name (0.0.0.0: all)")
    ] = "0.0.0.0"
    port: int = Field(default=DEFAULT_LISTENING_PORT, ge=1, le=65535)
    server_thumbprint: Thumbprint
    # A rotated server certificate announced over the pinned channel, or added by hand.
    also_trusted: list[Thumbprint] = []

    @property
    def thumbprints(self) -> list[str]:
        return [
            self.server_thumbprint,
            *(t for t in self.also_trusted if t != self.server_thumbprint),
        ]

    @property
    def address(self) -> str:
        """Where it listens, as people write it (an IPv6 address in brackets)."""
        return address_text((self.host, self.port))

    @property
    def label(self) -> str:
        """How the journal, the spool and the requests' URLs name this server: it has no
        address here."""
        return f"https://listening:{self.port}"

    @property
    def on_every_address(self) -> bool:
        return self.host in ("0.0.0.0", "::")

    @property
    def server(self) -> str:
        """The server as messages name it."""
        where = f"port {self.port}" if self.on_every_address else self.address
        return f"the server connecting to {where}"


class ProxySettings(BaseModel):
    """How the agent reaches its servers: directly, through HTTPS_PROXY/NO_PROXY, or through
    one explicit HTTP CONNECT proxy."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["none", "system", "explicit"] = "none"
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None

    @model_validator(mode="after")
    def _explicit_needs_address(self) -> ProxySettings:
        if self.mode == "explicit" and (not self.host or not self.port):
            raise ValueError("an explicit proxy needs host and port")
        return self


class LoggingSettings(BaseSettings):
    """What agent and server settings share: where and how they log, and where settings
    come from."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", hide_input_in_errors=True
    )

    log_format: LogFormat = "text"
    log_level: LogLevel = "INFO"
    # Unset: stderr (the journal under systemd). Set: that file, rotated at log_rotation_mb,
    # the newest log_retention_files rotated files kept.
    log_file: Path | None = None
    log_rotation_mb: float = Field(default=50.0, gt=0)
    log_retention_files: int = Field(default=10, ge=1)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


class AgentSettings(LoggingSettings):
    name: str | None = None
    servers: list[ServerNode] = []
    listen: ListeningSettings | None = None  # listening mode, beside or instead of polling
    proxy: ProxySettings = ProxySettings()
    # Poll every node a server cluster announces (docs/high-availability.md); false: only the
    # nodes configured here (e.g. when each node is reached through a route of its own).
    discover_nodes: bool = True
    concurrency: int = Field(default=4, ge=1, le=256)
    cancel_grace_seconds: float = Field(default=10.0, gt=0, le=3600)
    drain_seconds: float = Field(default=60.0, ge=0, le=24 * 3600)
    connect_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    backoff_max_seconds: float = Field(default=60.0, ge=0.1, le=3600)
    max_output_mb: float = Field(default=100.0, gt=0)
    max_envelope_kb: int = Field(default=2048, ge=16)
    spool_max_mb: float = Field(default=1024.0, gt=0)
    applications_root: Path | None = None  # default: <home>/Applications
    # File transfer tasks may only read and write under these folders (default: <home>/files).
    file_roots: list[Path] = []
    # Package extraction stops at any of these (docs/packages.md, "What extraction refuses").
    max_extract_mb: float = Field(default=2048.0, gt=0)
    max_extract_entries: int = Field(default=100_000, ge=1)
    max_extract_ratio: float = Field(default=100.0, ge=2)
    min_free_disk_mb: float = Field(default=512.0, ge=0)
    package_cache_mb: float = Field(default=2048.0, gt=0)  # least recently used pruned beyond
    # Under this much free space on the home's disk the agent takes no new tasks.
    min_free_home_mb: float = Field(default=64.0, ge=0)
    # A server that refuses this agent's certificate this long (its target was deleted) is
    # no longer polled; when no server is left, the agent exits with status 78.
    unregistered_give_up_seconds: float = Field(default=300.0, gt=0)
    # Metrics and health on 127.0.0.1:<port> (/metrics, /healthz, /readyz); unset: none.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)


def _store_url(value: object) -> object:
    """Refused before anything starts, naming what is accepted (never echoing the URL: it may
    hold a password)."""
    if isinstance(value, str) and value and not value.startswith(POSTGRESQL_SCHEMES):
        scheme = value.split("://")[0] if "://" in value else "no scheme"
        raise ValueError(
            f"must be empty (SQLite in the server home) or a postgresql:// URL, not {scheme}"
        )
    return value


POSTGRESQL_SCHEMES = ("postgresql://", "postgres://")


def _proxy_url(value: object) -> object:
    """An HTTP CONNECT proxy's address, refused before anything starts (never echoed: it may
    hold a password)."""
    if isinstance(value, str) and value and not _is_proxy_address(value):
        raise ValueError(
            "must be empty or http://[user:password@]host:port (an HTTP CONNECT proxy, port "
            "1-65535)"
        )
    return value


def _is_proxy_address(proxy_url: str) -> bool:
    if not re.fullmatch(r"http://[^/\s]+:\d{1,5}/?", proxy_url):
        return False
    try:
        return bool(urlsplit(proxy_url).port)  # 0 is no port
    except ValueError:  # out of range, or a broken IPv6 address
        return False


class ServerSettings(LoggingSettings):
    comms_host: str = "0.0.0.0"
    comms_port: int = Field(default=DEFAULT_COMMS_PORT, ge=0, le=65535)
    admin_host: str = "127.0.0.1"
    admin_port: int = Field(default=DEFAULT_ADMIN_PORT, ge=0, le=65535)
    hold_seconds: float = Field(default=25.0, gt=0, le=600)
    lease_seconds: float = Field(default=30.0, gt=0, le=3600)
    # A running task whose agent has not polled for this long is shown as lost (it may still
    # report its real result later). Default: one hold period plus a margin.
    agent_lost_seconds: float = Field(default=40.0, gt=0, le=24 * 3600)
    # After an agent rotates its certificate, the old one keeps working this long.
    certificate_overlap_seconds: float = Field(default=24 * 3600.0, gt=0)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024)
    max_package_bytes: int = Field(default=4 * 1024**3, ge=1024)
    # Connections without a client certificate (registration, diagnose's probe): each has this
    # long from its handshake to send its one request and read the answer, and so many may be
    # open from one address and in all (docs/security.md, "Connection limits").
    stranger_seconds: float = Field(default=10.0, gt=0, le=300)
    strangers_per_address: int = Field(default=16, ge=1)
    strangers_total: int = Field(default=256, ge=1)
    # Empty: SQLite in the server home (one node). postgresql://user@host:5432/db: the database
    # several nodes share; ?search_path=<schema> puts its tables in a schema of their own.
    store_url: Annotated[str, BeforeValidator(_store_url)] = ""
    # How agents reach this node's comms port, announced to them in poll answers so they poll
    # every node of a cluster (e.g. https://node2.example.com:10943). Default: this host's name
    # and the comms port. Only used with a PostgreSQL store.
    advertised_url: str = ""
    # Tasks that ended longer ago go, with their output (and emptied deployments); 0: keep all.
    retention_days: float = Field(default=30.0, ge=0)
    # /readyz answers 503 under this much free space on the server home's disk.
    min_free_disk_mb: float = Field(default=256.0, ge=0)
    # A portal session ends this long after sign-in.
    portal_session_minutes: float = Field(default=480.0, gt=0, le=7 * 24 * 60)
    # /metrics without an API key (e.g. the admin listener is reachable by Prometheus only).
    metrics_without_key: bool = False
    # Listening targets (docs/listening.md): reached through this HTTP CONNECT proxy when set
    # (http://[user:password@]host:port; the password better in $TENTACLE_POLL_LISTENING_PROXY_
    # PASSWORD), given up on after this long per connection, retried with jittered backoff.
    listening_proxy: Annotated[str, BeforeValidator(_proxy_url)] = ""
    listening_connect_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    listening_backoff_max_seconds: float = Field(default=60.0, ge=0.1, le=3600)


S = TypeVar("S", bound=LoggingSettings)


def load_settings(settings_type: type[S], toml_path: Path, **overrides: Any) -> S:
    """Read the file, the environment and ``overrides`` (flags; ``None`` means not given)."""
    bound = type(
        settings_type.__name__,
        (settings_type,),
        {"model_config": {**settings_type.model_config, "toml_file": toml_path}},
    )
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return settings_type.model_validate(bound(**given).model_dump())
    except ValidationError as exc:
        raise ConfigurationError(_settings_problem(exc, toml_path)) from exc
    except (tomllib.TOMLDecodeError, OSError) as exc:
        raise ConfigurationError(f"cannot read {toml_path}: {exc}") from exc


def update_config_file(toml_path: Path, **values: Any) -> None:
    """Merge ``values`` into the TOML file (a None removes its key) and write it atomically
    (temp file + rename)."""
    current = tomllib.loads(toml_path.read_text()) if toml_path.exists() else {}
    current.update({k: v for k, v in values.items() if v is not None})
    for key in [k for k, v in values.items() if v is None]:
        current.pop(key, None)
    toml_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = toml_path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # may hold a password
    with os.fdopen(fd, "w") as handle:
        import tomli_w  # only writers of the file need it, not the running agent

        handle.write(tomli_w.dumps(current))
    temporary.replace(toml_path)


def toml_data(model: BaseModel) -> dict[str, Any]:
    """A model as TOML can hold it: no None values, secrets as their real text (the file
    is the agent's own configuration, mode 0600)."""
    return dict(_reveal(model.model_dump(exclude_none=True)))


def _reveal(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_reveal(v) for v in value]
    return value


def _settings_problem(exc: ValidationError, toml_path: Path) -> str:
    lines = describe_validation_error(exc).split("; ")
    where = f"(from {toml_path}, {ENV_PREFIX}* variables or flags)"
    return "invalid settings " + where + ":\n" + "\n".join(f"  {line}" for line in lines)
