"""Unit tests for the runner stub's slot/memory accounting and warm LRU cache."""

from __future__ import annotations

import asyncio

import pytest

from runner_stub.slots import Lease, MemoryTooLarge, SlotPool, WarmCache


async def _queued(pool: SlotPool, n: int) -> None:
    """Yield to the loop until ``n`` callers are queued (no timing involved)."""
    for _ in range(100):
        if pool.waiting == n:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"expected {n} waiters, have {pool.waiting}")


def _take(pool: SlotPool, memory_mb: int = 1) -> Lease:
    lease = pool.try_acquire(memory_mb)
    assert lease is not None
    return lease


async def test_acquire_takes_a_slot_and_memory_and_release_gives_them_back() -> None:
    pool = SlotPool(slots=2, memory_mb=256)
    lease = await pool.acquire(100, max_wait=0)
    assert lease is not None
    assert (pool.slots_free, pool.memory_mb_free) == (1, 156)
    lease.release()
    lease.release()  # idempotent: must not give capacity back twice
    assert (pool.slots_free, pool.memory_mb_free) == (2, 256)


async def test_lease_is_a_context_manager() -> None:
    pool = SlotPool(slots=1, memory_mb=10)
    with _take(pool, 10) as lease:
        assert pool.slots_free == 0
    assert lease.released
    assert (pool.slots_free, pool.memory_mb_free) == (1, 10)


async def test_busy_with_no_wait_returns_none_at_once() -> None:
    pool = SlotPool(slots=1, memory_mb=10)
    held = _take(pool)
    assert await pool.acquire(1, max_wait=0) is None
    assert pool.waiting == 0
    held.release()


async def test_waiting_succeeds_when_a_slot_frees_within_the_wait() -> None:
    pool = SlotPool(slots=1, memory_mb=10)
    held = _take(pool)
    waiter = asyncio.create_task(pool.acquire(1, max_wait=30))
    await _queued(pool, 1)
    held.release()
    lease = await waiter
    assert lease is not None and pool.slots_free == 0
    lease.release()
    assert pool.slots_free == 1


async def test_waiting_times_out_and_leaves_nothing_queued() -> None:
    pool = SlotPool(slots=1, memory_mb=10)
    held = _take(pool)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await pool.acquire(1, max_wait=0.02) is None
    assert loop.time() - t0 >= 0.015
    assert pool.waiting == 0
    held.release()
    assert (pool.slots_free, pool.memory_mb_free) == (1, 10)


async def test_free_slot_but_not_enough_memory_waits_for_memory() -> None:
    pool = SlotPool(slots=4, memory_mb=256)
    big = _take(pool, 200)
    waiter = asyncio.create_task(pool.acquire(100, max_wait=30))
    await _queued(pool, 1)
    assert pool.slots_free == 3  # slots alone do not admit it
    big.release()
    lease = await waiter
    assert lease is not None
    assert (pool.slots_free, pool.memory_mb_free) == (3, 156)
    lease.release()


async def test_memory_over_the_total_can_never_fit() -> None:
    pool = SlotPool(slots=4, memory_mb=256)
    with pytest.raises(MemoryTooLarge, match="257 MiB.*256 MiB"):
        await pool.acquire(257, max_wait=1)
    assert (pool.slots_free, pool.memory_mb_free) == (4, 256)
    lease = await pool.acquire(256, max_wait=0)  # exactly the total fits
    assert lease is not None
    lease.release()


async def test_waiters_are_served_first_come_first_served() -> None:
    # A big call at the head must not be overtaken by small ones behind it.
    pool = SlotPool(slots=4, memory_mb=100)
    held = _take(pool, 60)
    big = asyncio.create_task(pool.acquire(100, max_wait=30))
    await _queued(pool, 1)
    small = asyncio.create_task(pool.acquire(10, max_wait=30))
    await _queued(pool, 2)
    assert pool.try_acquire(10) is None  # no barging past the queue either
    held.release()
    big_lease = await big
    assert big_lease is not None and not small.done()
    big_lease.release()
    small_lease = await small
    assert small_lease is not None
    small_lease.release()
    assert (pool.slots_free, pool.memory_mb_free) == (4, 100)


async def test_expired_head_lets_the_next_waiter_in() -> None:
    pool = SlotPool(slots=2, memory_mb=100)
    held = _take(pool, 50)
    big = asyncio.create_task(pool.acquire(100, max_wait=0.02))
    await _queued(pool, 1)
    small = asyncio.create_task(pool.acquire(10, max_wait=30))
    await _queued(pool, 2)
    assert await big is None
    small_lease = await small  # admitted as soon as the big one gave up
    assert small_lease is not None
    small_lease.release()
    held.release()


async def test_cancelled_waiter_leaves_no_trace() -> None:
    pool = SlotPool(slots=1, memory_mb=10)
    held = _take(pool)
    waiter = asyncio.create_task(pool.acquire(1, max_wait=30))
    await _queued(pool, 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pool.waiting == 0
    held.release()
    assert pool.slots_free == 1


async def test_cancel_racing_a_grant_gives_the_capacity_back() -> None:
    pool = SlotPool(slots=1, memory_mb=10)
    held = _take(pool, 10)
    waiter = asyncio.create_task(pool.acquire(10, max_wait=30))
    await _queued(pool, 1)
    held.release()  # grants to the waiter...
    waiter.cancel()  # ...which is cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (pool.slots_free, pool.memory_mb_free) == (1, 10)


def test_pool_rejects_nonsense_sizes() -> None:
    with pytest.raises(ValueError, match="slots"):
        SlotPool(slots=0, memory_mb=10)
    with pytest.raises(ValueError, match="memory"):
        SlotPool(slots=1, memory_mb=0)


def test_warm_cache_evicts_least_recently_used_first() -> None:
    warm = WarmCache(2)
    assert not warm.hit("a")
    assert warm.add("a") == []
    assert warm.add("b") == []
    assert warm.keys() == ["b", "a"]
    assert warm.hit("a")  # a is now the most recent, b the LRU
    assert warm.keys() == ["a", "b"]
    assert warm.add("c") == ["b"]
    assert warm.keys() == ["c", "a"]
    assert "b" not in warm and not warm.hit("b")
    assert len(warm) == 2


def test_warm_cache_re_adding_a_key_refreshes_it() -> None:
    warm = WarmCache(2)
    warm.add("a")
    warm.add("b")
    assert warm.add("a") == []
    assert warm.add("c") == ["b"]
    assert warm.keys() == ["c", "a"]


def test_warm_cache_of_zero_keeps_nothing_warm() -> None:
    warm = WarmCache(0)
    assert warm.add("a") == ["a"]
    assert not warm.hit("a")
    assert warm.keys() == [] and len(warm) == 0


def test_warm_cache_rejects_negative_capacity() -> None:
    with pytest.raises(ValueError):
        WarmCache(-1)
