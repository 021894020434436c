"""Bounded admission: at most `max_in_flight` requests are being served at once.

Past the bound a request is refused at once (503 + Retry-After) instead of waiting in an unbounded
queue, so a spike costs the excess requests a fast refusal and the admitted ones keep their latency.
"""

from __future__ import annotations


class Admission:
    def __init__(self, max_in_flight: int):
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    def try_enter(self) -> bool:
        if self.in_flight >= self.max_in_flight:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        if self.in_flight <= 0:
            raise RuntimeError("admission: leave() without a matching try_enter()")
        self.in_flight -= 1
