"""``bench.overload`` measures what it claims: its statistics, and its run-twice count.

The benchmark's targets are printed, never asserted here; this checks the
measuring itself, with a tiny window.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.overload import kendall_tau, main, percentile


def test_kendall_tau_counts_concordant_minus_discordant_pairs() -> None:
    assert kendall_tau([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # one swapped neighbour pair out of 6 pairs: (5 - 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # a tie in completion time is neither concordant nor discordant
    assert kendall_tau([1, 2, 3], [1, 1, 2]) == pytest.approx(2 / 3)


def test_percentile_is_nearest_rank() -> None:
    xs = [float(i) for i in range(1, 101)]
    assert percentile(xs, 0.5) == 50.0
    assert percentile(xs, 0.99) == 99.0
    assert percentile(xs, 1.0) == 100.0
    assert percentile([], 0.99) == 0.0


@pytest.mark.slow
def test_two_lbs_case_counts_every_call_from_the_stub_logs(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    assert main(["--cases", "2lb", "--modes", "queue", "--window", "1", "--warmup", "0.5",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2lb: 0 calls run twice" in out
    r = json.loads((tmp_path / "overload.json").read_text())["results"][0]
    assert (r["mode"], r["case"], r["lbs"]) == ("queue", "2lb", 2)
    assert r["completed"] > 0 and r["errors"] == {}
    # Every OK call is found in the stubs' per-call lines, and those lines
    # agree with the stubs' own counters: the run-twice count is measured.
    assert r["ok_calls"] >= r["completed"]
    assert r["ok_calls_not_in_stub_logs"] == 0
    assert r["accepted_lines"] == r["stub_requests_handled"] >= r["ok_calls"]
