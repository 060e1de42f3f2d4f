"""bench.sim --overload: the sweep and queue simulations on tiny worlds (well under 2 s)."""

from __future__ import annotations

import heapq
import itertools
import json
from collections import defaultdict, deque
from typing import Any

import pytest

from bench.sim import (
    OvCall,
    OverloadConfig,
    World,
    _OverloadEngine,
    main,
    overload_run,
)

_PROBE = 99


class ProbeByProbeSweep(_OverloadEngine):
    """fn's sweep the slow, obvious way: one event per probe of one runner.

    The fast sweep must place every call at the same time, on the same runner,
    after the same NACKs. Ties (two probes of a runner at the same µs) go the
    way the fast one breaks them: other events first, then by its walker key.
    """

    def __init__(self, world: World, cfg: OverloadConfig) -> None:
        super().__init__(world, cfg, keep_calls=True)
        self.period = self.n * self.nack + round(cfg.retry_all_ms * 1000)
        self.held: list[deque[tuple[int, OvCall, int]]] = [deque() for _ in range(self.n)]

    def _probe_at(self, t: int, call: OvCall, k: int) -> None:
        heapq.heappush(self.heap, (t, (1 << 62) + call.key, _PROBE, (call, k)))

    def arrive(self, call: OvCall) -> None:
        t0 = call.sent + self.half
        call.key = ((t0 - call.home * self.nack) % self.period) << 32 | call.id
        self._probe_at(t0, call, 0)

    def handle(self, kind: int, payload: Any) -> None:
        call, k = payload  # the k-th probe of this call, counting every walk
        if call.outcome is not None or call.placed is not None:
            return
        r = (call.home + k % self.n) % self.n
        if self.free[r] > 0:
            call.nacks = k
            self.place(call, r)
            return
        if self.wait:  # the runner holds the try for a slot to free
            self.held[r].append((self.now + self.wait, call, k))
        walk, off = divmod(k + 1, self.n)
        self._probe_at(call.sent + self.half + walk * self.period + off * self.nack,
                       call, k + 1)

    def on_runner_free(self, call: OvCall, r: int) -> None:
        held = self.held[r]
        while held:
            until, c, k = held.popleft()
            if until >= self.now and c.outcome is None and c.placed is None:
                c.nacks = k
                self.place(c, r)
                return

    def on_finish(self, call: OvCall, r: int) -> None:
        pass

    def on_timeout(self, call: OvCall) -> None:
        walks, rem = divmod(max(0, self.now - call.sent - self.half), self.period)
        call.nacks = walks * self.n + min(self.n, -(-rem // self.nack))


def outcomes(calls: list[OvCall]) -> list[tuple[Any, ...]]:
    return [(c.id, c.placed, c.runner, c.nacks, c.outcome) for c in calls]


@pytest.mark.parametrize("runners,slots,clients,nack_ms,wait_ms,timeout_s", [
    (5, 2, 20, 1.0, 0.0, 360.0),
    (7, 1, 30, 3.0, 0.0, 0.3),  # some calls time out
    (2, 4, 64, 11.0, 10.0, 1.0),  # issue 12's stubs: a try waits 10 ms for a slot
])
def test_fast_sweep_places_exactly_like_probe_by_probe(
        runners: int, slots: int, clients: int, nack_ms: float, wait_ms: float,
        timeout_s: float) -> None:
    world = World(1, runners, slots, (clients,), nack_ms, wait_ms, 0.2, 1.5)
    for seed in (1, 2, 3):
        cfg = OverloadConfig(seed=seed, placer_timeout_s=timeout_s)
        _, fast = overload_run("sweep", world, cfg, keep_calls=True)
        ref = ProbeByProbeSweep(world, cfg)
        ref.run()
        assert len(fast) > clients
        assert sum(c.nacks for c in fast) > 0
        assert outcomes(fast) == outcomes(ref.calls)


TINY_1LB = World(1, 2, 2, (32,), 11.0, 10.0, 0.3, 1.5)  # 8x
TINY_LBS = World(3, 30, 2, (480,), 1.0, 0.0, 0.3, 1.0)  # 3 LBs share 30 runners, 8x
FAST = OverloadConfig(report_interval_ms=50.0, staleness_ms=20.0, placer_timeout_s=0.6)


@pytest.mark.parametrize("world", [TINY_1LB, TINY_LBS], ids=["1 LB", "3 LBs"])
def test_queue_nacks_far_less_than_sweep_at_8x(world: World) -> None:
    sweep, _ = overload_run("sweep", world, FAST)
    queue, _ = overload_run("queue", world, FAST)
    assert sweep["nacks_per_call"] > 5
    assert queue["nacks_per_call"] < sweep["nacks_per_call"] / 20
    assert queue["calls_per_s"] > 0.9 * sweep["calls_per_s"]
    if world.lbs == 1:  # one LB sees every call: its view is never wrong
        assert queue["nacks_per_call"] == 0


@pytest.mark.parametrize("mode", ["sweep", "queue"])
@pytest.mark.parametrize("world", [TINY_1LB, TINY_LBS], ids=["1 LB", "3 LBs"])
def test_each_call_runs_once_and_no_runner_holds_more_than_its_slots(
        mode: str, world: World) -> None:
    res, calls = overload_run(mode, world, FAST, keep_calls=True)
    half = (round(world.nack_ms * 1000) - round(world.nack_wait_ms * 1000)) // 2
    # A call that ended at its runner in the last half round trip has no result yet.
    settled = round((world.warmup_s + world.measure_s) * 1_000_000) - half
    assert len({c.id for c in calls}) == len(calls)
    # Rebuild each runner's occupancy from the calls alone: +1 when placed, -1 when
    # it ended there (its result reaches the LB half a round trip later).
    edges: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for c in calls:
        if c.placed is None:
            assert c.runner == -1 and c.outcome in (None, "timeout")
            continue
        assert c.outcome in ("ok", None)  # placed calls never time out
        edges[c.runner].append((c.placed, 1))
        if c.outcome == "ok":
            assert c.done is not None and c.done - half > c.placed
            edges[c.runner].append((c.done - half, -1))
    assert sum(1 for c in calls if c.outcome == "ok") > 0
    for events in edges.values():
        occupancy = itertools.accumulate(d for t, d in sorted(events)  # ends sort first
                                         if t <= settled)
        assert max(occupancy) <= world.slots
    assert res["max_runner_occupancy"] <= world.slots


@pytest.mark.parametrize("mode", ["sweep", "queue"])
def test_every_call_completes_or_times_out_and_the_client_sends_the_next(mode: str) -> None:
    _, calls = overload_run(mode, TINY_1LB, FAST, keep_calls=True)
    by_client: dict[int, list[OvCall]] = defaultdict(list)
    for c in calls:
        by_client[c.client].append(c)
    assert len(by_client) == TINY_1LB.clients
    for seq in by_client.values():
        *ended, last = sorted(seq, key=lambda c: c.sent)
        for c, nxt in zip(ended, seq[1:], strict=True):
            assert c.outcome in ("ok", "timeout")
            assert nxt.sent == c.done
            if c.outcome == "timeout":
                assert c.done == c.sent + round(FAST.placer_timeout_s * 1_000_000)
        assert last.outcome is None  # still waiting or running when the run ended
    if mode == "sweep":  # 8x with a 0.6 s placer timeout: sweep starves some calls
        assert any(c.outcome == "timeout" for c in calls)


def test_queue_is_fifo_within_each_app_and_fair_across_apps() -> None:
    world = World(1, 2, 4, (56, 8), 11.0, 10.0, 0.5, 4.0)  # A 7/8 of 8x, B 1/8
    cfg = OverloadConfig()
    res, calls = overload_run("queue", world, cfg, keep_calls=True)
    for app in (0, 1):
        placed = sorted((c for c in calls if c.app == app and c.placed is not None),
                        key=lambda c: (c.placed, c.id))
        sent = [c.sent for c in placed]
        assert len(sent) > 20
        assert sent == sorted(sent)
    # Equal shares: B (8 clients) gets half the 80 calls/s, A the other half.
    assert res["apps"]["b"]["calls_per_s"] == pytest.approx(40, rel=0.1)
    assert res["apps"]["a"]["calls_per_s"] == pytest.approx(40, rel=0.1)
    alone, _ = overload_run("queue", World(1, 2, 4, (0, 8), 11.0, 10.0, 0.5, 4.0), cfg)
    assert res["apps"]["b"]["p99_ms"] <= 2.1 * alone["apps"]["b"]["p99_ms"]
    sweep, _ = overload_run("sweep", world, cfg)  # blind to apps: B gets ~1/8
    assert sweep["apps"]["b"]["calls_per_s"] < 20


def test_overload_flag_prints_tables_and_writes_json(tmp_path: Any) -> None:
    lines: list[str] = []
    path = tmp_path / "ov.json"
    report = main(["--overload", "--scenario", "1 LB, 8x", "--single-warmup-s", "0.3",
                   "--single-measure-s", "1", "--json", str(path)], out=lines.append)
    text = "\n".join(lines)
    assert "## 1 LB, 8x" in text and "| sweep" in text and "| queue" in text
    assert "## queue / sweep" in text
    saved = json.loads(path.read_text())
    assert saved == json.loads(json.dumps(report))
    row = saved["scenarios"]["1 LB, 8x"]
    assert row["sweep"]["nacks_per_call"] > row["queue"]["nacks_per_call"]
