"""Smoke tests of the benchmark: it runs end to end at a tiny N and its baseline agrees with us.

Correctness only: no test here asserts on a timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.fakes import floor_seconds
from bench.generator import deal_pages

ROOT = Path(__file__).resolve().parents[1]


def run_bench(*args: str) -> tuple[str, dict[str, Any]]:
    """Run ``python -m bench`` from the repository root; return stdout and the last line's JSON."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    return done.stdout, json.loads(lines[-1])


class TestGenerator:
    def test_same_seed_same_deals(self):
        """Pages depend only on the seed and their position, so runs are reproducible."""
        first = [row[:20] for page in deal_pages(1500, seed=3, page_size=500) for row in page]
        again = [row[:20] for page in deal_pages(1500, seed=3, page_size=500) for row in page]
        other = [row[:20] for page in deal_pages(1500, seed=4, page_size=500) for row in page]
        assert first == again
        assert first != other
        assert len(first) == 1500
        assert len({row[1] for row in first}) == 1500

    def test_has_the_flaws_of_a_real_crm(self):
        """The data carries missing amounts, foreign currencies, archived and deleted deals."""
        rows = [row for page in deal_pages(5000, seed=1) for row in page]
        assert any(row[3] is None for row in rows)
        assert {"USD", "GBP", "SEK", None} <= {row[4] for row in rows}
        assert any(row[8] for row in rows)
        assert {"open", "won", "lost", "deleted"} == {row[7] for row in rows}
        assert any(row[20] for row in rows)


class TestFloor:
    def test_least_time_for_a_rolling_window(self):
        """R requests with at most M per rolling W seconds need (ceil(R/M) - 1) * W seconds."""
        assert floor_seconds(100, 100, 10.0) == 0
        assert floor_seconds(101, 100, 10.0) == 10.0
        assert floor_seconds(203, 100, 10.0) == 20.0
        assert floor_seconds(84, 20, 2.0) == 8.0


class TestArguments:
    def test_bad_counts_are_usage_errors_naming_the_option(self):
        """A negative or non-numeric count stops before any work, naming the option and the problem."""
        for args, message in ((("--deals", "-5"), "argument --deals: -5 is less than 1"),
                              (("--floor-deals", "x"), "argument --floor-deals: 'x' is not a whole number")):
            done = subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True,
                                  text=True, timeout=60, check=False)
            assert done.returncode == 2
            assert message in done.stderr
            assert done.stdout == ""


@pytest.mark.slow
class TestEndToEnd:
    def test_tiny_run_prints_a_table_and_agrees_with_the_baseline(self):
        """2,000 deals: every part runs, the last line is JSON, and pandas agrees to the cent."""
        out, report = run_bench("--deals", "2000", "--crm-deals", "300", "--trace-deals", "500")
        assert "1. ingest" in out
        assert report["ingest"]["deals"] == 2000
        assert report["resync_no_change"]["updated"] == 0
        assert report["resync_no_change"]["unchanged"] == 2000
        assert report["resync_1pct_full"]["updated"] == 20
        assert report["resync_1pct_incremental"]["seen"] == 20
        assert report["baseline"]["agree_to_the_cent"], report["baseline"]["problems"]
        # three years of history: all 53 weekly points; the last five have no 30 days passed yet
        assert report["forecast"]["as_of_points"] == 48
        assert "forecast_under_30s" in report["budgets"]
        assert report["baseline"]["levers_identical"]
        assert report["baseline"]["scopes_compared"] > 40
        for name in ("hubspot", "pipedrive"):
            assert report["crm"][name]["full"]["seen"] == 300
            assert report["crm"][name]["no_change"]["updated"] == 0
        assert report["tracemalloc"]["deals"] == 500
        assert report["driver_floor"]["deals"] == 2000
        assert report["ratios"]["ingest_over_driver_floor"] > 1  # the bare driver is the floor
        assert report["interpreter_calibration_us"] > 0
        history = report["history_rebuild"]  # a first run's rebuild: window_days days, every scope
        assert history["days"] == report["window_days"] == 90
        assert history["snapshot_rows"] == 90 * report["recompute"]["scopes"]
        assert history["last_day_agrees_with_recompute"]
        assert report["budgets"]["history_rebuild_agrees_with_recompute"] is True
        assert isinstance(report["budgets"]["history_rebuild_90_days_under_60s"], bool)
        assert "3b. history rebuild" in out
        assert report["drilldown"]["lines"] > report["recompute"]["open_deals"]  # open + closed + left out

    def test_baseline_agrees_on_postgresql(self):
        """On PostgreSQL (in its own schema) the pandas baseline agrees with our numbers too."""
        url = os.environ.get("VELOCITY_TEST_DATABASE_URL")
        if not url:
            pytest.skip("VELOCITY_TEST_DATABASE_URL is not set")
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
        _, report = run_bench("--deals", "2000", "--store", url, "--crm-deals", "0", "--trace-deals", "0")
        assert report["store"] == "postgresql+psycopg"
        assert report["driver_floor"]["deals"] == 2000
        assert report["baseline"]["agree_to_the_cent"], report["baseline"]["problems"]
        # three years of history: all 53 weekly points; the last five have no 30 days passed yet
        assert report["forecast"]["as_of_points"] == 48
        assert "forecast_under_30s" in report["budgets"]
        assert report["baseline"]["levers_identical"]
