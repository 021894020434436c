"""Hedging budget: at most `budget_percent` of shard requests may be hedges.

Every primary shard request earns `budget_percent` hundredths of a hedge; a hedge spends a whole
one. Integer hundredths keep the share exact over any number of requests. The balance is capped,
so a quiet period cannot bank an unbounded burst of hedges: a slow shard can never double the
load, and in steady state hedges add at most the configured share.
"""

from __future__ import annotations

_HEDGE = 100  # cost of one hedge, in hundredths


class HedgeBudget:
    def __init__(self, budget_percent: int, max_banked_hedges: int = 10) -> None:
        if not 0 <= budget_percent <= 100:
            raise ValueError(f"hedging budget_percent must be within 0..100, got {budget_percent}")
        self.budget_percent = budget_percent
        self._cap = max(1, max_banked_hedges) * _HEDGE if budget_percent else 0
        self._balance = 0

    def on_request(self) -> None:
        """Record one primary shard request."""
        self._balance = min(self._cap, self._balance + self.budget_percent)

    def try_spend(self) -> bool:
        """True (and charge the budget) if one more hedge fits in it."""
        if self._balance >= _HEDGE:
            self._balance -= _HEDGE
            return True
        return False
