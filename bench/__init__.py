"""Benchmarks run as real processes on loopback (``make bench``, ``make bench-placement``)."""
