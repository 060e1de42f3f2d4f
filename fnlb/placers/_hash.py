"""SipHash-2-4 and Jump Consistent Hash, as fn's ``ch`` placer uses them."""

from __future__ import annotations

import struct
from functools import lru_cache

__all__ = ["siphash24", "jump_hash", "fn_key_hash", "FN_SIPHASH_KEY"]

_MASK = 0xFFFFFFFFFFFFFFFF
# fn's ch placer: siphash.Hash(0, 0x4c617279426f6174, fn_id) ("LaryBoat").
FN_SIPHASH_KEY = (0, 0x4C617279426F6174)


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK


def siphash24(k0: int, k1: int, data: bytes) -> int:
    """64-bit SipHash-2-4 of ``data`` with the 128-bit key (k0, k1)."""
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573

    def rounds(n: int) -> None:
        nonlocal v0, v1, v2, v3
        for _ in range(n):
            v0 = (v0 + v1) & _MASK
            v1 = _rotl(v1, 13) ^ v0
            v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & _MASK
            v3 = _rotl(v3, 16) ^ v2
            v0 = (v0 + v3) & _MASK
            v3 = _rotl(v3, 21) ^ v0
            v2 = (v2 + v1) & _MASK
            v1 = _rotl(v1, 17) ^ v2
            v2 = _rotl(v2, 32)

    n = len(data)
    end = n - n % 8
    for (m,) in struct.iter_unpack("<Q", data[:end]):
        v3 ^= m
        rounds(2)
        v0 ^= m
    tail = data[end:] + b"\0" * (7 - n % 8) + bytes([n & 0xFF])
    m = int(struct.unpack("<Q", tail)[0])
    v3 ^= m
    rounds(2)
    v0 ^= m
    v2 ^= 0xFF
    rounds(4)
    return v0 ^ v1 ^ v2 ^ v3


def jump_hash(key: int, num_buckets: int) -> int:
    """Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm" (2014).

    The paper's version (floating-point division). fn's Go port uses integer
    division, which gives different buckets and divides by zero for keys below
    2**33; we follow the paper so published test vectors hold.
    """
    if num_buckets <= 0:
        return -1
    b, j = -1, 0
    while j < num_buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & _MASK
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


@lru_cache(maxsize=65536)
def fn_key_hash(fn_id: str) -> int:
    """fn's placement key for a function: SipHash-2-4 of its id (cached: it is pure)."""
    return siphash24(FN_SIPHASH_KEY[0], FN_SIPHASH_KEY[1], fn_id.encode())
