"""Replace sensitive values in output lines before they leave the worker."""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Iterable

MASK = "********"


class SecretMasker:
    """Masks each secret and its base64 and URL-encoded forms.

    Output is masked line by line after lines are reassembled, so a value written by the child
    in two pieces is still caught.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for secret in secrets:
            forms.update(_encoded_forms(secret))
            if "\n" in secret:  # a multi-line secret (a key, say) printed line by line
                forms.update(line for line in secret.splitlines() if len(line.strip()) >= 8)
        # Longest first, so a secret that contains another is masked whole.
        self._forms = sorted((f for f in forms if f), key=len, reverse=True)
        self.longest = len(self._forms[0]) if self._forms else 0

    def mask(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        return text


def _encoded_forms(secret: str) -> set[str]:
    if not secret.strip():
        return set()
    raw = secret.encode()
    forms = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}
    if len(secret) >= 4:  # short values would mask common base64 fragments of ordinary text
        forms.add(base64.b64encode(raw).decode().rstrip("="))
    return forms
