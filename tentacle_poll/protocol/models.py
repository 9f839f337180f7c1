"""v1 wire models, shared by agent, server and admin client. docs/protocol.md describes them.

Models ignore unknown fields so that a newer peer can add fields without breaking an older one;
everything that is present is strictly typed and bounded.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

PROTOCOL_VERSION = "1"
# Every integer on the wire fits the stores' 64-bit columns, with room for seq + lines.
MAX_SEQ = 2**62
MAX_SIZE = 2**62
ExitCode = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
MAX_SLOTS = 256
MAX_EVENTS_PER_BATCH = 2000
MAX_LINE_CHARS = 64 * 1024
Stream = Literal["stdout", "stderr", "system"]
# One event carries one line, or a block of consecutive lines of one stream read together.
MAX_EVENT_CHARS = 256 * 1024

# What each pattern means, in words: a refused value is told these, not the expression
# (protocol/codec.py's describe_validation_error).
PATTERN_WORDS: dict[str, str] = {}


def matching(pattern: str, words: str) -> StringConstraints:
    PATTERN_WORDS[pattern] = words
    return StringConstraints(pattern=pattern)


Name = Annotated[
    str,
    matching(
        r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$",
        "1 to 100 letters, digits, '_', '.', '@' or '-', starting with a letter or a digit",
    ),
]


def _plain_text(label: str) -> str:
    """No control characters: a label is shown and filtered on, and PostgreSQL's jsonb cannot
    hold a NUL (one stored would break every filtered listing of the fleet)."""
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in label):
        raise ValueError("holds a control character; a label is plain text")
    return label


Label = Annotated[
    str,
    StringConstraints(min_length=1, max_length=100, strip_whitespace=True),
    AfterValidator(_plain_text),
]
TaskId = Annotated[
    str, matching(r"^[A-Za-z0-9-]{1,64}$", "a task id: 1 to 64 letters, digits or '-'")
]
PackageFormat = Literal["zip", "tar.gz"]
PACKAGE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"  # package ids and versions
PackageName = Annotated[
    str,
    matching(
        PACKAGE_NAME_PATTERN,
        "1 to 100 letters, digits, '_', '.' or '-', starting with a letter or a digit",
    ),
]
Sha256 = Annotated[str, matching(r"^[0-9a-f]{64}$", "a SHA-256: 64 lowercase hex digits")]
VariableName = Annotated[
    str,
    matching(
        r"^[A-Za-z_][A-Za-z0-9_]{0,199}$",
        "a variable name: a letter or '_', then up to 199 letters, digits or '_'",
    ),
]


class WireModel(BaseModel):
    # No NaN or Infinity: JSON has neither, and a reader of the stored value would choke on it.
    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)


class TaskState(StrEnum):
    QUEUED = "queued"
    LEASED = "leased"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    LOST = "lost"
    EXPIRED = "expired"  # its deadline passed before its target accepted it: never delivered

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset(
    {
        TaskState.SUCCEEDED,
        TaskState.FAILED,
        TaskState.TIMED_OUT,
        TaskState.CANCELLED,
        TaskState.EXPIRED,
        TaskState.LOST,
    }
)
FinalState = Literal["succeeded", "failed", "timed_out", "cancelled"]


class Problem(WireModel):
    """An RFC 7807 problem body: every 4xx/5xx answer carries one."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str = ""


# --- tasks ---------------------------------------------------------------------------------


class Variable(WireModel):
    name: VariableName
    value: str = Field(max_length=64 * 1024)
    sensitive: bool = False


ScriptSyntax = Literal["bash", "sh", "python", "pwsh", "cmd"]


class ScriptSpec(WireModel):
    syntax: ScriptSyntax = "bash"
    body: str = Field(min_length=1, max_length=1024 * 1024)
    arguments: list[Annotated[str, Field(max_length=8192)]] = Field(default=[], max_length=256)
    working_directory: str | None = Field(default=None, max_length=4096)


MutexName = Annotated[
    str, matching(r"^[A-Za-z0-9_.-]{1,100}$", "1 to 100 letters, digits, '_', '.' or '-'")
]


class DeploySpec(WireModel):
    """Deploy a package version into a new release folder and run its deploy scripts. The
    server fills in sha256, size and format from its package store when the task is queued."""

    package_id: PackageName
    version: PackageName
    environment: Label | None = None  # default: the target's first environment
    retain_releases: int = Field(default=3, ge=1, le=100)
    sha256: Sha256 | None = None
    size: int | None = Field(default=None, ge=0, le=MAX_SIZE)
    format: PackageFormat | None = None


class RollbackSpec(WireModel):
    """Switch ``current`` back to a release still on disk and run its deploy scripts again."""

    package_id: PackageName
    environment: Label | None = None
    version: PackageName | None = None  # default: the release deployed before the current one


class SendFileSpec(WireModel):
    """Put a file the server holds (by its SHA-256, from `PUT /api/files`) at ``destination``
    on the target, inside one of the agent's file roots."""

    sha256: Sha256
    size: int = Field(ge=0, le=MAX_SIZE)
    destination: str = Field(min_length=1, max_length=4096)
    overwrite: bool = False


class FetchFileSpec(WireModel):
    """Send a file from the target (inside one of its file roots) to the server."""

    path: str = Field(min_length=1, max_length=4096)


class FileView(WireModel):
    sha256: Sha256
    size: int


class HealthSpec(WireModel):
    """Report agent version, OS, Python, free disk, free slots and certificate expiry."""


TaskKind = Literal["script", "deploy", "rollback", "health", "send_file", "fetch_file"]


class TaskSpec(WireModel):
    """What the server queues and the agent runs; `kind` names the payload field that is set.

    Isolation works as in Octopus Tentacle: ``full`` holds the named mutex exclusively (nothing
    else using that mutex runs meanwhile), ``none`` holds it shared.
    """

    kind: TaskKind = "script"
    script: ScriptSpec | None = None
    deploy: DeploySpec | None = None
    rollback: RollbackSpec | None = None
    health: HealthSpec | None = None
    send_file: SendFileSpec | None = None
    fetch_file: FetchFileSpec | None = None
    variables: list[Variable] = Field(default=[], max_length=1000)
    timeout_seconds: float | None = Field(default=None, gt=0, le=7 * 24 * 3600)
    isolation: Literal["full", "none"] = "none"
    isolation_mutex: MutexName = "RunningScript"
    isolation_timeout_seconds: float | None = Field(default=None, gt=0, le=7 * 24 * 3600)

    @model_validator(mode="after")
    def _payload_matches_kind(self) -> TaskSpec:
        if getattr(self, self.kind) is None:
            raise ValueError(f"a {self.kind} task needs its '{self.kind}' field")
        return self


class Envelope(WireModel):
    """One task as delivered to an agent. `spec` stays a plain mapping on the wire so that an
    agent can report a task it cannot parse as failed, with the reason, instead of dropping it."""

    task_id: TaskId
    spec: dict[str, Any]


# --- comms routes --------------------------------------------------------------------------


class RegisterRequest(WireModel):
    name: Name
    certificate_pem: str = Field(min_length=100, max_length=16 * 1024)
    environments: list[Label] = Field(min_length=1, max_length=100)
    roles: list[Label] = Field(min_length=1, max_length=100)
    tenants: list[Label] = Field(default=[], max_length=1000)
    tenant_tags: list[Label] = Field(default=[], max_length=1000)
    agent_version: str = Field(default="", max_length=100)
    replace: bool = False


class RegisterResponse(WireModel):
    agent_id: str
    name: str
    thumbprint: str
    server_thumbprint: str


class DeregisterRequest(WireModel):
    """An agent leaving: its target is removed (authenticated by its certificate alone)."""

    agent_version: str = Field(default="", max_length=64)


class DeregisterResponse(WireModel):
    name: str


Thumbprint = Annotated[
    str, matching(r"^[0-9A-F]{64}$", "a thumbprint: 64 hex digits (a SHA-256, upper case)")
]


class PollRequest(WireModel):
    free_slots: int = Field(ge=0, le=MAX_SLOTS)
    running: list[TaskId] = Field(default=[], max_length=MAX_SLOTS * 4)
    agent_version: str = Field(default="", max_length=100)
    # The server thumbprints this agent trusts, so the server can tell who is ready for its
    # certificate rotation.
    trusted_server_thumbprints: list[Thumbprint] = Field(default=[], max_length=8)
    # Ask for a shorter hold than the server's (0: answer at once; diagnostics use this).
    hold_seconds: float | None = Field(default=None, ge=0, le=600)


class PollResponse(WireModel):
    envelopes: list[Envelope] = []
    cancels: list[TaskId] = []
    hold_seconds: float
    # The server's current thumbprint, then the next one while a rotation is prepared: the
    # agent adds them to its pins, having learnt them over the pinned channel.
    server_thumbprints: list[Thumbprint] = []
    # The comms URLs of every live node of the server's cluster (empty from a single server):
    # the agent polls each, pinned to the same thumbprints.
    nodes: list[str] = Field(default=[], max_length=64)


class CertificateRequest(WireModel):
    """A new client certificate for this agent, sent over a connection made with the old one."""

    certificate_pem: str = Field(min_length=100, max_length=16 * 1024)


class CertificateResponse(WireModel):
    thumbprint: Thumbprint
    previous_thumbprint: Thumbprint
    previous_valid_until: float


class Event(WireModel):
    """``lines`` consecutive output lines joined by newlines; ``seq`` numbers the first of them.

    Busy output travels as blocks (every line of one read of the pipe), so a task printing
    millions of lines costs thousands of events, not millions; an idle stream sends each line.
    """

    seq: int = Field(ge=1, le=MAX_SEQ)
    stream: Stream
    text: str = Field(max_length=MAX_EVENT_CHARS)
    ts: float
    lines: int = Field(default=1, ge=1, le=MAX_EVENT_CHARS + 1)
    # The event's last line goes on in the next event's first line: a line longer than the
    # agent's split size was cut there. Followers join the two; stored output keeps the mark.
    continues: bool = False

    @model_validator(mode="after")
    def _lines_match_text(self) -> Event:
        held = self.text.count("\n") + 1
        if held != self.lines:
            raise ValueError(f"lines is {self.lines} but text holds {held} lines")
        return self

    @property
    def last_seq(self) -> int:
        return self.seq + self.lines - 1

    def split(self) -> list[Event]:
        """One event per line, for readers that page through lines."""
        if self.lines == 1:
            return [self]
        texts = enumerate(self.text.split("\n"), start=self.seq)
        return [Event(seq=seq, stream=self.stream, text=text, ts=self.ts) for seq, text in texts]


class EventsRequest(WireModel):
    events: list[Event] = Field(min_length=1, max_length=MAX_EVENTS_PER_BATCH)


class EventsResponse(WireModel):
    acked_seq: int
    cancel: bool = False


class ResultRequest(WireModel):
    state: FinalState
    exit_code: ExitCode | None = None
    last_seq: int = Field(ge=0, le=MAX_SEQ)
    reason: str = Field(default="", max_length=4096)
    # The agent never started the task and gives it back (its accept was never confirmed, or
    # it died before starting): the server queues it again, or ends it expired past its
    # deadline. Sent with state "failed" and last_seq 0, which is what older servers record.
    requeue: bool = False


class AcceptRequest(WireModel):
    """Sent before the agent starts a task; the body is empty in v1."""


class AcceptResponse(WireModel):
    task_id: TaskId
    state: TaskState


# --- admin API -----------------------------------------------------------------------------


# A queued task's deadline, in seconds from its submission (docs/packages.md, "Deadlines").
ExpiresSeconds = Annotated[float, Field(gt=0, le=30 * 24 * 3600)]


class SubmitTask(TaskSpec):
    target: Name
    expires_seconds: ExpiresSeconds | None = None


class TaskView(WireModel):
    id: TaskId
    target: str
    kind: str
    state: TaskState
    exit_code: int | None
    reason: str
    cancel_requested: bool
    created_at: float
    started_at: float | None
    finished_at: float | None
    last_seq: int
    submitted_by: str = ""
    expires_at: float | None = None


def port_in_range(url: str) -> str:
    """``url`` when the port it names, if any, is one a connection can use."""
    port = re.search(r":(\d{1,5})/?$", url)
    if port and not 1 <= int(port[1]) <= 65535:
        raise ValueError(f"port {port[1]} is out of range: use 1-65535")
    return url


# Where a listening target waits for the server: https://HOST:PORT, no path.
ListeningUrl = Annotated[
    str,
    matching(
        r"^https://([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]+\]):\d{1,5}$",
        "https://HOST:PORT, with no path (an IPv6 address in brackets)",
    ),
    AfterValidator(port_in_range),
]


class AddListeningTarget(WireModel):
    """A target the server connects to (listening mode), known by its certificate thumbprint."""

    name: Name
    listening_url: ListeningUrl
    thumbprint: Thumbprint
    environments: list[Label] = Field(min_length=1, max_length=100)
    roles: list[Label] = Field(min_length=1, max_length=100)
    tenants: list[Label] = Field(default=[], max_length=1000)
    tenant_tags: list[Label] = Field(default=[], max_length=1000)
    replace: bool = False


class ConnectionView(WireModel):
    """How this server's last attempt to connect to a listening target went."""

    ok: bool
    at: float
    detail: str  # why not, in words


class TargetView(WireModel):
    name: str
    environments: list[str]
    roles: list[str]
    tenants: list[str]
    tenant_tags: list[str]
    thumbprint: str
    connected: bool
    last_seen: float | None
    agent_version: str
    certificate_expires_at: float | None = None
    previous_thumbprint: str | None = None
    previous_valid_until: float | None = None
    trusts_next_server_certificate: bool | None = None
    listening_url: str | None = None  # None: the target polls
    last_connection: ConnectionView | None = None  # listening targets, on the node asked


class PackageView(WireModel):
    package_id: PackageName
    version: PackageName
    sha256: Sha256
    size: int
    format: PackageFormat
    uploaded_at: float


class ServerCertificateView(WireModel):
    thumbprint: str
    expires_at: float
    next_thumbprint: str | None = None
    next_expires_at: float | None = None


class ServerCertificateAction(WireModel):
    action: Literal["prepare", "activate", "cancel"]
    force: bool = False


class FanOut(WireModel):
    """One task for every target in ``environment`` having any of ``roles`` (every target of
    the environment when no role is given; and, when given, any of ``tenants`` and any of
    ``tenant_tags``)."""

    environment: Label
    roles: list[Label] = Field(default=[], max_length=100)
    tenants: list[Label] = []
    tenant_tags: list[Label] = []
    task: TaskSpec
    stop_on_first_failure: bool = False
    expires_seconds: ExpiresSeconds | None = None


class DeploymentTarget(WireModel):
    target: str
    task_id: str
    state: TaskState
    reason: str
    connected: bool


DeploymentState = Literal["running", "succeeded", "failed"]


class DeploymentView(WireModel):
    id: str
    description: str
    state: DeploymentState
    counts: dict[str, int]
    targets: list[DeploymentTarget]
    offline: list[str]


class DeploymentSummaryView(WireModel):
    """A deployment in the list (``GET /api/deployments``): newest first, tasks by state."""

    id: str
    description: str
    created_at: float
    state: DeploymentState
    counts: dict[str, int]


class PruneView(WireModel):
    """What retention removes (or would remove) now: tasks that ended before ``cutoff``
    (seconds since the epoch) with their output, and deployments left empty."""

    older_than_days: float
    cutoff: float
    tasks: int
    deployments: int
    removed: bool = False  # False: a dry run


class EventsPage(WireModel):
    task: TaskView
    events: list[Event]


class TokenCreated(WireModel):
    token: str
    expires_at: float
    id: str = ""


class TokenView(WireModel):
    id: str
    created_at: float
    expires_at: float
    created_by: str


Scope = Literal["admin", "deploy", "read"]


class ApiKeyCreate(WireModel):
    """``environments`` limits a deploy key to targets in them (empty: any environment)."""

    name: Name
    scope: Scope = "admin"
    environments: list[Label] = Field(default=[], max_length=100)

    @model_validator(mode="after")
    def _only_deploy_keys_have_environments(self) -> ApiKeyCreate:
        if self.environments and self.scope != "deploy":
            raise ValueError("only a deploy key is limited to environments")
        return self


class ApiKeyView(WireModel):
    name: str
    scope: Scope
    environments: list[str]
    created_at: float
    last_used: float | None
    created_by: str


class ApiKeyCreated(ApiKeyView):
    key: str


class AuditEntryView(WireModel):
    at: float
    key: str
    action: str
    subject: str
    detail: str
