"""How long the LB's certificates have left: logged at start and daily, and a gauge.

    watch = CertExpiryWatch({"front": front_tls, "runner_client": runner_tls},
                            gauge=metrics.tls_cert_expiry)
    watch.start()          # logs now, then every day; warns under 7 days
    ...
    await watch.stop()

The gauge is computed when scraped, from the material in use at that moment,
so it follows a certificate that was replaced (files rotated, SIGHUP) at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from fnlb.logs import kv
from fnlb.tls._load import TLSMaterial

__all__ = ["CertExpiryWatch", "DAY_S", "WARN_BEFORE_S"]

# One logger for the whole package: its lines keep saying logger=fnlb.tls.
log = logging.getLogger("fnlb.tls")

DAY_S = 24 * 3600.0
WARN_BEFORE_S = 7 * DAY_S


class HasMaterial(Protocol):
    """``ReloadingServerCredentials`` and ``ClientTLS``: the material in use now."""

    @property
    def material(self) -> TLSMaterial: ...


def _left(material: TLSMaterial, now: float) -> float:
    return material.not_after.timestamp() - now


def _days(seconds: float) -> str:
    if abs(seconds) >= DAY_S:
        return f"{seconds / DAY_S:.1f}d"
    if abs(seconds) >= 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds:.0f}s"


class CertExpiryWatch:
    """Logs each role's certificate expiry now and every ``interval``; sets ``gauge{role}``.

    ``sources`` maps a role (``front``, ``runner_client``) to what holds its
    certificate; None entries (no TLS on that side) are skipped. ``gauge`` is a
    prometheus Gauge with a ``role`` label, or None.
    """

    def __init__(self, sources: Mapping[str, HasMaterial | None], gauge: Any = None, *,
                 interval: float = DAY_S, warn_before: float = WARN_BEFORE_S,
                 clock: Callable[[], float] = time.time) -> None:
        self._sources = {role: src for role, src in sources.items() if src is not None}
        self._interval = interval
        self._warn_before = warn_before
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        if gauge is not None:
            for role, src in self._sources.items():
                gauge.labels(role).set_function(self._seconds_left(src))

    def _seconds_left(self, src: HasMaterial) -> Callable[[], float]:
        return lambda: _left(src.material, self._clock())

    def check(self) -> None:
        """Log one line per certificate: info, warning under ``warn_before``, error once expired."""
        now = self._clock()
        for role, src in self._sources.items():
            m = src.material
            left = _left(m, now)
            fields = kv(role=role, subject=m.subject, serial=m.serial,
                        not_after=m.not_after.isoformat(), expires_in=_days(left))
            if left <= 0:
                log.error("tls certificate expired: replace it (new files are picked up "
                          "without a restart)", extra=fields)
            elif left < self._warn_before:
                log.warning("tls certificate expires soon: replace it (new files are picked "
                            "up without a restart)", extra=fields)
            else:
                log.info("tls certificate expiry", extra=fields)

    def start(self) -> None:
        """Check now, then every ``interval`` seconds until ``stop``."""
        if not self._sources or self._task is not None:
            return
        self.check()
        self._task = asyncio.get_running_loop().create_task(self._run(),
                                                             name="fnlb-cert-expiry")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.check()

    async def stop(self) -> None:
        """Stop the daily check; safe to call twice or before ``start``."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

