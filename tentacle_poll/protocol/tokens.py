"""Registration tokens: one-time secrets that also carry the server's thumbprint, so an agent
holding a token can pin the server before it sends the token anywhere.

Format: ``TPR1.<server thumbprint, 64 hex>.<secret>``.
"""

from __future__ import annotations

from tentacle_poll.exceptions import ConfigurationError

PREFIX = "TPR1"


def make_token(server_thumbprint: str, secret: str) -> str:
    return f"{PREFIX}.{server_thumbprint}.{secret}"


def parse_token(token: str) -> tuple[str, str]:
    """(server thumbprint, secret); ConfigurationError when the text is not a token."""
    parts = token.strip().split(".", 2)
    if len(parts) != 3 or parts[0] != PREFIX or len(parts[1]) != 64:
        raise ConfigurationError(
            "that is not a registration token (they start with TPR1.); "
            "create one with `tentacle-poll server token create`"
        )
    return parts[1].upper(), parts[2]


def token_secret(token: str) -> str:
    try:
        return parse_token(token)[1]
    except ConfigurationError:
        return token
