"""The retry budget for idempotent calls, after gRPC's retry throttling.

A call the client marked idempotent may run again on another runner when the
runner that took it was lost (crash, partition) before any of its response
arrived. Retries must not turn one runner's outage into a storm, so they draw
on one budget per LB, as gRPC's ``retryThrottling`` does: a token count that
starts full at ``max_tokens``, loses 1 per lost call and gains ``token_ratio``
per call that ran; retries are allowed only while it is above half::

    budget = RetryBudget()
    budget.succeeded()          # a committed call ran
    if budget.failed():         # a committed call was lost: may we retry it?
        ...
"""

from __future__ import annotations

__all__ = ["RetryBudget"]


class RetryBudget:
    def __init__(self, max_tokens: float = 10.0, token_ratio: float = 0.1) -> None:
        if not max_tokens > 0 or not token_ratio > 0:
            raise ValueError("max_tokens and token_ratio must be > 0")
        self.max_tokens = max_tokens
        self.token_ratio = token_ratio
        self.tokens = max_tokens

    def succeeded(self) -> None:
        self.tokens = min(self.max_tokens, self.tokens + self.token_ratio)

    def failed(self) -> bool:
        """Count a lost call; True when a retry is allowed now."""
        self.tokens = max(0.0, self.tokens - 1)
        return self.tokens > self.max_tokens / 2
