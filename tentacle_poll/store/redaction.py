"""What the store keeps of an ended task's spec: no sensitive value, sealed or not."""

from __future__ import annotations

import json

ERASED = ""


def without_sensitive_values(spec_json: str) -> str:
    """The spec with every sensitive variable's value erased (its name stays, for the record)."""
    if '"sensitive":true' not in spec_json:  # specs are stored compact: no need to parse most
        return spec_json
    spec = json.loads(spec_json)
    variables = spec.get("variables") or []
    if not any(v.get("sensitive") for v in variables):
        return spec_json
    spec["variables"] = [{**v, "value": ERASED} if v.get("sensitive") else v for v in variables]
    return json.dumps(spec, separators=(",", ":"))
