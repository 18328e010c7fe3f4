"""When and how long to wait before sending a call again: exponential
backoff with full jitter, never shorter than the gateway's ``RetryInfo``,
and the rule for which calls may be resent at all."""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from typing import Optional

import grpc

from .errors import PrismError


@dataclass(frozen=True)
class RetryPolicy:
    """How calls that failed with ``UNAVAILABLE`` or ``RESOURCE_EXHAUSTED``
    are retried. The wait before attempt *n* is random between zero and
    ``min(max_backoff, initial_backoff * 2**n)`` seconds, and at least what
    the gateway asked for. The default rides out a gateway restart: ten
    attempts over about ten seconds."""

    max_attempts: int = 10
    initial_backoff: float = 0.05
    max_backoff: float = 2.0

    @classmethod
    def none(cls) -> "RetryPolicy":
        """A policy that never retries."""
        return cls(max_attempts=1)

    def start(self) -> "Backoff":
        return Backoff(self)


class Backoff:
    """The attempts of one logical call."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self._attempt = 1

    def next(self, asked: Optional[float]) -> Optional[float]:
        """Seconds to wait before the next attempt; None when spent."""
        if self._attempt >= self._policy.max_attempts:
            return None
        ceiling = min(
            self._policy.max_backoff,
            self._policy.initial_backoff * (2 ** min(self._attempt - 1, 20)),
        )
        self._attempt += 1
        return max(random.uniform(0.0, ceiling), asked or 0.0)


class Resend(enum.Enum):
    """Whether resending a call can apply it twice."""

    #: A read, or a write carrying an idempotency token: resent on any
    #: transient error.
    SAFE = "safe"
    #: A write the gateway cannot deduplicate (Queue and PubSub Publish):
    #: resent only when refused before anything happened, or never sent.
    ONLY_IF_NOT_APPLIED = "only-if-not-applied"

    def allows(self, e: PrismError) -> bool:
        if self is Resend.SAFE:
            return e.is_transient or e.not_sent
        return e.not_sent or (
            e.code == grpc.StatusCode.RESOURCE_EXHAUSTED and e.reason is not None and e.is_transient
        )
