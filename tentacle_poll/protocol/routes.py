"""Route paths and header names of protocol v1 (comms listener and admin API)."""

from __future__ import annotations

PROTOCOL_HEADER = "X-Tentacle-Protocol"
API_KEY_HEADER = "X-Tentacle-Api-Key"
REGISTRATION_TOKEN_HEADER = "X-Tentacle-Registration-Token"
PROBLEM_CONTENT_TYPE = "application/problem+json"

# comms listener (mutual TLS)
REGISTER = "/v1/register"
POLL = "/v1/poll"
TASK_ACCEPT = "/v1/tasks/{task_id}/accept"
TASK_EVENTS = "/v1/tasks/{task_id}/events"
TASK_RESULT = "/v1/tasks/{task_id}/result"
CERTIFICATE = "/v1/certificate"
DEREGISTER = "/v1/deregister"  # the agent's own target removed, by its certificate
PACKAGE_BLOB = "/v1/packages/{sha256}"
TASK_FILE = "/v1/tasks/{task_id}/file"

# Listening mode (docs/protocol.md): on a connection the server opened to an agent's listening
# port, the server's first bytes say what the connection is for. DIAL: the agent starts TLS as
# the client, pinned as always, and sends its v1 requests over it. CERTIFICATE: the agent shows
# its certificate (as a TLS server) so that a target added by thumbprint can be trusted.
DIAL_PREAMBLE = b"TENTACLE/1 DIAL\n"
CERTIFICATE_PREAMBLE = b"TENTACLE/1 CERT\n"
PREAMBLE_BYTES = 16

# admin API (HTTP on loopback by default, API key header)
ADMIN_HEALTH = "/api/health"
ADMIN_ALIVE = "/healthz"  # 200 while the process answers
ADMIN_READY = "/readyz"  # 200 when ready to serve, 503 with the reasons otherwise
ADMIN_METRICS = "/metrics"  # Prometheus text format
ADMIN_TARGETS = "/api/targets"
ADMIN_TARGET = "/api/targets/{name}"
ADMIN_TASKS = "/api/tasks"
ADMIN_TASK = "/api/tasks/{task_id}"
ADMIN_TASK_EVENTS = "/api/tasks/{task_id}/events"
ADMIN_TASK_CANCEL = "/api/tasks/{task_id}/cancel"
ADMIN_TOKENS = "/api/registration-tokens"
ADMIN_TOKEN = "/api/registration-tokens/{token_id}"
ADMIN_KEYS = "/api/keys"
ADMIN_KEY = "/api/keys/{name}"
ADMIN_AUDIT = "/api/audit"
ADMIN_SERVER_CERTIFICATE = "/api/server-certificate"
ADMIN_DEPLOYMENTS = "/api/deployments"
ADMIN_DEPLOYMENT = "/api/deployments/{deployment_id}"
ADMIN_DEPLOYMENT_ROLLBACK = "/api/deployments/{deployment_id}/rollback"
ADMIN_FILES = "/api/files"
ADMIN_FILE = "/api/files/{sha256}"
ADMIN_PRUNE = "/api/prune"  # GET: what retention would remove now; POST: remove it
ADMIN_PACKAGES = "/api/packages"
ADMIN_PACKAGE = "/api/packages/{package_id}/{version}"


def task_path(template: str, task_id: str) -> str:
    return template.format(task_id=task_id)
