"""Drift: which fields the operator sets differ in the live object (pure).

The applied-hash annotation says which manifest was last applied, not that the object still
says it: `kubectl scale sts --replicas=0` or `kubectl edit` of a label changes an owned field and
leaves the annotation alone. `drifted_fields(desired, live)` compares only what the manifest
sets, so everything else is out of scope by construction:

- fields the API server defaults (a probe's `scheme`, a StatefulSet's `revisionHistoryLimit`,
  `fieldRef.apiVersion`) are not in the manifest;
- fields other managers own (an HPA's or a human's extra label, `kubectl rollout restart`'s
  template annotation, an env entry a webhook adds) are not in it either; in lists keyed by
  `name` (containers, env, ports, volumes, mounts) only the entries we set are compared;
- values the API server normalises compare equal: quantities in requests, limits and sizeLimit
  (`1000m` is `1`, `1024Mi` is `1Gi`), and a zero value we set that the server omits
  (`readOnly: false`, `{}`, `[]`).

`metadata` is compared for labels and annotations only (name, namespace and owner references are
how the object was found). The result names each drifted field by its path, e.g.
`spec.replicas` or `spec.template.spec.containers[router].env[SHARDREC_ROUTER_POD_NAMESPACE]`,
for the DriftCorrected Event.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

MAX_REPORTED = 8
"""At most this many fields are named; more drift reads `... and N more`."""

_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
_SUFFIX = {
    None: Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_METADATA_COMPARED = ("labels", "annotations")


def quantity(text: str) -> Decimal | None:
    """A Kubernetes quantity's value, or None when `text` is not one."""
    match = _QUANTITY.match(text)
    if match is None:
        return None
    try:
        return Decimal(match.group(1)) * _SUFFIX[match.group(2)]
    except InvalidOperation:
        return None


def _is_zero(value: Any) -> bool:
    return value is None or value is False or value in (0, "", [], {})


def _holds_quantity(path: str) -> bool:
    """Resource requests and limits, and an emptyDir's size: the fields the builders set as quantities."""
    parent, _, last = path.rpartition(".")
    return last == "sizeLimit" or parent.endswith((".requests", ".limits"))


def _same_scalar(desired: Any, live: Any, path: str) -> bool:
    if desired == live and type(desired) is type(live):
        return True
    if (
        _holds_quantity(path)
        and isinstance(desired, str | int | float)
        and isinstance(live, str | int | float)
    ):
        a, b = quantity(str(desired)), quantity(str(live))
        return a is not None and a == b
    return False


def _keyed(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(item, dict) and isinstance(item.get("name"), str) for item in items)


def _compare(desired: Any, live: Any, path: str, out: list[str]) -> None:
    if live is None:
        if not _is_zero(desired):
            out.append(path)
        return
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            out.append(path)
            return
        for key, value in desired.items():
            _compare(value, live.get(key), f"{path}.{key}" if path else key, out)
    elif isinstance(desired, list):
        if not isinstance(live, list):
            out.append(path)
        elif _keyed(desired) and all(isinstance(item, dict) for item in live):
            by_name = {item.get("name"): item for item in live}
            for item in desired:
                _compare(item, by_name.get(item["name"]), f"{path}[{item['name']}]", out)
        elif len(desired) != len(live):
            out.append(path)
        else:
            for index, (want, have) in enumerate(zip(desired, live, strict=True)):
                _compare(want, have, f"{path}[{index}]", out)
    elif not _same_scalar(desired, live, path):
        out.append(path)


def drifted_fields(desired: dict[str, Any], live: dict[str, Any]) -> list[str]:
    """Paths of the fields `desired` sets that `live` does not hold (empty: no drift)."""
    out: list[str] = []
    desired_meta = desired.get("metadata") or {}
    live_meta = live.get("metadata") or {}
    for key in _METADATA_COMPARED:
        if key in desired_meta:
            _compare(desired_meta[key], live_meta.get(key), f"metadata.{key}", out)
    for key, value in desired.items():
        if key not in ("apiVersion", "kind", "metadata", "status"):
            _compare(value, live.get(key), key, out)
    return out


def describe(fields: list[str]) -> str:
    """The fields for an Event message, at most MAX_REPORTED of them."""
    shown = ", ".join(fields[:MAX_REPORTED])
    more = len(fields) - MAX_REPORTED
    return f"{shown} and {more} more" if more > 0 else shown
