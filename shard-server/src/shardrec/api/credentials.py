"""The shard credential files: what the operator's per-cluster Secret holds and the servers read.

One Secret per cluster (`<cluster>-shard-token`) with two keys, both mounted as files:

- `accepted`: the tokens a shard accepts, one a line (one token normally, two during a rotation);
- `send`: the one token the router sends (`Authorization: Bearer`).

A rotation never makes a request fail because the two sides never disagree: the new token is
first *accepted* everywhere, only then *sent*, and the old one is dropped only once nothing sends
it (`shardrec_operator.desired.shard_token` runs the three phases, each held for longer than the
kubelet takes to refresh a mounted Secret). Servers re-read the files when they change
(`shardrec.serving.credentials`), so a rotation restarts no pod.

Kept in `shardrec.api` because the file layout is an interface between the operator and the
data-plane image, like the command lines in `commands`.
"""

from __future__ import annotations

from typing import Final

ACCEPTED_KEY: Final = "accepted"
SEND_KEY: Final = "send"
TOKEN_MOUNT: Final = "/var/run/shardrec/shard-token"
"""Where shard and router pods mount the Secret (a directory: kubelet updates it in place; a
`subPath` mount would never see a rotation)."""


def parse_tokens(text: str) -> tuple[str, ...]:
    """The tokens of an `accepted` file: non-empty lines, surrounding whitespace dropped."""
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def format_tokens(tokens: tuple[str, ...]) -> str:
    return "".join(f"{token}\n" for token in tokens)
