"""Outlier detection across the pool: ejection limits, panic, readmission, slow start.

``RunnerHealth`` (``fnlb.pools.health``) is the per-runner monitor: it counts
one runner's failures and knows its back-off. ``OutlierDetector`` is the
pool-wide part (as Envoy keeps its per-host monitor apart from the cluster
detector): whether an ejection is allowed (``--max-ejection-percent``), which
runners are offered, panic when every runner is ejected, and the slow-start
share of a ramping runner. It holds no member table; the pool passes members in.

What is offered (``docs/pools.md`` has the why):

* never ejected or draining runners; among the rest, only those that are
  **up** (their last probe or call reached them) while any is: a runner that
  never answered, or that a probe or a call just failed to reach, is not
  offered until a probe reaches it, whatever ``--max-ejection-percent`` allows
  (500 dead runners must not tax every call). When none is up, all the
  non-ejected ones are offered;
* **panic**: when every non-draining runner is ejected, all of them are offered
  (Envoy's panic threshold) rather than failing every call;
* **slow start**: a readmitted runner (or one that joined a running pool) is in
  the tuple at its usual place, but for ``--slow-start`` seconds a shrinking
  share of the attempts offered to it pass on to the next runner with a local
  busy NACK, so hash-based placers keep their mapping and every placer sees the ramp.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable

from fnlb.logs import kv
from fnlb.metrics import Metrics
from fnlb.pools.health import HealthConfig
from fnlb.pools.membership import Member, ip_order

__all__ = ["OutlierDetector"]

log = logging.getLogger(__name__)


class OutlierDetector:
    """Pool-wide ejection rules over the members the pool passes in."""

    def __init__(self, config: HealthConfig, metrics: Metrics, rng: random.Random) -> None:
        self.config = config
        self._metrics = metrics
        self._rng = rng
        self.panic = False
        self._offered_full = 0  # offered runners not in slow start (see offered())

    def offered(self, members: Iterable[Member]) -> list[Member]:
        """The members placers get, in the order every LB replica agrees on."""
        live = [m for m in members if not m.draining]
        offered = [m for m in live if not m.health.ejected]
        panic = bool(live) and not offered
        up = [m for m in offered if m.up]
        if up:
            offered = up
        if panic != self.panic:
            self.panic = panic
            self._metrics.pool_panic.set(1 if panic else 0)
            if panic:
                log.warning("every runner is ejected: offering all of them (panic)",
                            extra=kv(runners=len(live)))
            else:
                log.info("panic over: healthy runners are back", extra=kv(runners=len(offered)))
        chosen = live if panic else offered
        chosen.sort(key=lambda m: ip_order(m.address))
        # share() ends ramps that are over, so the count is current.
        self._offered_full = sum(1 for m in chosen if m.health.share() >= 1.0)
        return chosen

    def slow_start_skip(self, m: Member) -> bool | None:
        """Should this attempt pass a ramping runner by? None: its ramp just ended."""
        if m.health.ramp_from is None:
            return False
        share = m.health.share()
        if share >= 1.0:
            return None  # the offered set's full-share count is stale: recount
        # Skip only when a full-share runner can take the call instead.
        if self.panic or self._offered_full == 0:
            return False
        if self._rng.random() < share:
            return False
        self._metrics.pool_slow_start_skips.inc()
        return True

    def failure(self, m: Member, members: Iterable[Member], error: str, seen_by: str, *,
                count: int = 1) -> bool:
        """Record a failure; True when it ejected the runner (the offered set changed)."""
        self._metrics.pool_runner_failures.labels(seen_by).inc()
        if not m.health.failure(error, count=count) or m.health.ejected or m.draining:
            return False
        live = [x for x in members if not x.draining]
        ejected = sum(1 for x in live if x.health.ejected)
        limit = self.config.max_ejected(len(live))
        if ejected >= limit:
            self._metrics.pool_ejections_blocked.inc()
            if not m.blocked_logged:
                m.blocked_logged = True
                log.warning("not ejecting failing runner: --max-ejection-percent reached",
                            extra=kv(runner=m.address, ejected=ejected, runners=len(live),
                                     error=m.health.last_error))
            return False
        m.blocked_logged = False
        backoff = m.health.eject()
        self._metrics.pool_ejections.labels(seen_by).inc()
        log.warning("runner ejected", extra=kv(
            runner=m.address, seen_by=seen_by, failures=m.health.failures,
            backoff_s=f"{backoff:g}", error=m.health.last_error))
        return True

    def readmit_if_due(self, m: Member) -> bool:
        """An answered probe: readmit an ejected runner whose back-off is over."""
        if not (m.health.ejected and m.health.may_readmit()):
            return False
        m.health.readmit()
        self._metrics.pool_readmissions.inc()
        log.info("runner readmitted", extra=kv(
            runner=m.address, slow_start_s=f"{self.config.slow_start:g}"))
        return True
