"""Placers and the placer tracker against fake runners (fn semantics)."""

from __future__ import annotations

import asyncio
import time

import pytest

from fnlb.errors import ClientTimeout, PoolError, RunnerError, ServerTooBusy
from fnlb.metrics import Metrics
from fnlb.placers import PLACERS, make_placer
from fnlb.placers._hash import fn_key_hash, jump_hash, siphash24
from fnlb.runnerpool import PlacerConfig
from tests.fakes import FakePool, FakeRunner, make_call
from tests.helpers import sample

FAST = PlacerConfig(retry_all_delay=0.001, placer_timeout=0.2, detached_placer_timeout=0.1)


# -- hashes -------------------------------------------------------------------

def test_siphash24_reference_vectors() -> None:
    # Reference vectors of the SipHash paper: key 00..0f, message 00..(n-1).
    k0, k1 = 0x0706050403020100, 0x0F0E0D0C0B0A0908
    assert siphash24(k0, k1, b"") == 0x726FDB47DD0E0E31
    assert siphash24(k0, k1, bytes(range(8))) == 0x93F5F5799A932462
    assert siphash24(k0, k1, bytes(range(15))) == 0xA129CA6149BE45E5
    assert siphash24(k0, k1, bytes(range(63))) == 0x958A324CEB064572


def test_jump_hash_reference_vectors() -> None:
    assert jump_hash(1, 1) == 0
    assert jump_hash(42, 57) == 43
    assert jump_hash(0xDEAD10CC, 1) == 0
    assert jump_hash(0xDEAD10CC, 666) == 361
    assert jump_hash(256, 1024) == 520


def test_jump_hash_moves_about_one_nth_when_last_runner_leaves() -> None:
    n, keys = 10, [fn_key_hash(f"fn-{i}") for i in range(5000)]
    before = [jump_hash(k, n) for k in keys]
    after = [jump_hash(k, n - 1) for k in keys]
    moved = sum(a != b for a, b in zip(before, after, strict=True)) / len(keys)
    assert 0.07 < moved < 0.13  # ~1/10
    # Only the keys that lived on the removed bucket move.
    assert all(b == n - 1 for a, b in zip(before, after, strict=True) if a != b) or all(
        a == n - 1 for a, b in zip(before, after, strict=True) if a != b)


# -- orders -------------------------------------------------------------------

async def test_ch_starts_at_home_runner_and_walks_forward() -> None:
    runners = [FakeRunner(f"r{i}", "busy") for i in range(5)]
    runners[3].behaviour = "ok"
    placer = make_placer("ch", FAST, Metrics())
    call = make_call(fn_id="my-fn")
    home = jump_hash(fn_key_hash("my-fn"), 5)
    order = [r.address for r in placer.order(runners, call)]
    assert order == [f"r{(home + j) % 5}" for j in range(5)]
    # Same function -> same home every time.
    assert [r.address for r in placer.order(runners, make_call(fn_id="my-fn"))] == order


async def test_naive_rotates_its_start_and_covers_everyone() -> None:
    runners = [FakeRunner(f"r{i}") for i in range(4)]
    placer = make_placer("naive", FAST, Metrics())
    firsts = set()
    for i in range(8):
        order = [r.address for r in placer.order(runners, make_call(call_id=str(i)))]
        assert sorted(order) == ["r0", "r1", "r2", "r3"]
        firsts.add(order[0])
    assert firsts == {"r0", "r1", "r2", "r3"}


# -- the placement loop (every placer) -----------------------------------------

@pytest.mark.parametrize("name", sorted(PLACERS))
async def test_nack_moves_to_next_runner(name: str) -> None:
    m = Metrics()
    runners = [FakeRunner("a", "busy"), FakeRunner("b", "busy"), FakeRunner("c", "down")]
    runners.append(FakeRunner("d", "ok"))
    call = make_call()
    placed = await make_placer(name, FAST, m).place_call(FakePool(runners), call)
    assert placed.address == "d"
    assert call.response.body() == b"hello"
    assert call.attempts == sum(len(r.tried) for r in runners)
    assert sample(m, "fnlb_placer_placed_total", {"result": "ok"}) == 1
    assert sample(m, "fnlb_placer_retries_total", {"reason": "busy"}) == sum(
        len(r.tried) for r in runners[:2])
    assert sample(m, "fnlb_placer_retries_total", {"reason": "error"}) == len(runners[2].tried)


@pytest.mark.parametrize("name", sorted(PLACERS))
async def test_all_busy_until_placer_timeout_is_server_too_busy(name: str) -> None:
    m = Metrics()
    runners = [FakeRunner("a", "busy"), FakeRunner("b", "busy")]
    t0 = time.monotonic()
    with pytest.raises(ServerTooBusy):
        await make_placer(name, FAST, m).place_call(FakePool(runners), make_call())
    assert time.monotonic() - t0 >= FAST.placer_timeout
    assert len(runners[0].tried) > 1  # the whole list was retried after the delay
    assert sample(m, "fnlb_placer_timeouts_total") == 1
    assert sample(m, "fnlb_placer_attempts_count") == 1


async def test_detached_calls_use_the_detached_placer_timeout() -> None:
    cfg = PlacerConfig(retry_all_delay=0.001, placer_timeout=30, detached_placer_timeout=0.05)
    t0 = time.monotonic()
    with pytest.raises(ServerTooBusy):
        await make_placer("naive", cfg, Metrics()).place_call(
            FakePool([FakeRunner("a", "busy")]), make_call(call_type="detached"))
    # Generous: only tells the 50 ms detached timeout from the 30 s sync one.
    assert time.monotonic() - t0 < 20


async def test_committed_failure_is_never_retried_elsewhere() -> None:
    m = Metrics()
    runners = [FakeRunner("a", "fail"), FakeRunner("b", "ok")]
    placer = make_placer("ch", FAST, m)
    call = make_call(fn_id="x")
    first = next(iter(placer.order(runners, call)))
    first.behaviour = "fail"
    other = runners[1] if first is runners[0] else runners[0]
    other.behaviour = "ok"
    with pytest.raises(RunnerError):
        await placer.place_call(FakePool(runners), call)
    assert other.tried == []
    assert sample(m, "fnlb_placer_placed_total", {"result": "error"}) == 1


async def test_client_deadline_ends_placement_with_timeout() -> None:
    m = Metrics()
    cfg = PlacerConfig(retry_all_delay=0.001, placer_timeout=30)
    with pytest.raises(ClientTimeout):
        await make_placer("naive", cfg, m).place_call(
            FakePool([FakeRunner("a", "busy")]), make_call(), deadline=time.monotonic() + 0.05)
    assert sample(m, "fnlb_placer_client_timeouts_total") == 1
    assert sample(m, "fnlb_placer_timeouts_total") == 0


async def test_client_deadline_during_a_committed_attempt_aborts_it() -> None:
    m = Metrics()
    with pytest.raises(ClientTimeout):
        await make_placer("naive", FAST, m).place_call(
            FakePool([FakeRunner("a", "hang")]), make_call(), deadline=time.monotonic() + 0.05)
    assert sample(m, "fnlb_placer_placed_total", {"result": "abort"}) == 1


async def test_client_cancel_is_counted() -> None:
    m = Metrics()
    runner = FakeRunner("a", "hang")
    task = asyncio.create_task(make_placer("naive", FAST, m).place_call(
        FakePool([runner]), make_call()))
    await runner.entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sample(m, "fnlb_placer_client_cancels_total") == 1


async def test_empty_pool_is_retried_like_busy_until_timeout() -> None:
    m = Metrics()
    pool = FakePool([])
    with pytest.raises(ServerTooBusy):
        await make_placer("naive", FAST, m).place_call(pool, make_call())
    assert pool.lookups > 1
    assert sample(m, "fnlb_pool_empty_total") == pool.lookups


async def test_pool_error_that_retry_cannot_fix_fails_fast() -> None:
    m = Metrics()
    pool = FakePool([], error=PoolError("bad discovery name", retryable=False))
    cfg = PlacerConfig(retry_all_delay=0.001, placer_timeout=30)
    t0 = time.monotonic()
    with pytest.raises(PoolError, match="bad discovery name"):
        await make_placer("naive", cfg, m).place_call(pool, make_call())
    # Generous, only catches retrying until the 30 s placer timeout; the one
    # lookup below is the proof that it failed fast.
    assert time.monotonic() - t0 < 20
    assert pool.lookups == 1
    assert sample(m, "fnlb_pool_errors_total") == 1


async def test_retryable_pool_error_keeps_trying_then_reports_it() -> None:
    m = Metrics()
    pool = FakePool([], error=PoolError("dns lookup failed", retryable=True))
    with pytest.raises(PoolError, match="dns lookup failed"):
        await make_placer("naive", FAST, m).place_call(pool, make_call())
    assert pool.lookups > 1


def test_unknown_placer_name_lists_the_known_ones() -> None:
    from fnlb.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown placer 'nope'.*naive"):
        make_placer("nope")
