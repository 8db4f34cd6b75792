"""benchmarks/send_path_cpu.py keeps working: a tiny run completes, every stage is still seen, every row is sent.

Speed is never asserted (the machine is shared); what is asserted is what the figures rest on: the library
boundaries still catch the send path's work, and the nested-call accounting counts each CPU second once.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path

from devstack.settings import SETTINGS

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "send_path_cpu.py"
STAGE_ROWS = ("ledger (psycopg)", "limiter (redis-py)", "compose (Composer)", "SES client (transport.send)")
OTHER_ROWS = ("everything else", "send task process, total", "PostgreSQL: this run's backends",
              "PostgreSQL: whole server (shared)", "nginx (the SES stand-in)", "achieved rate",
              "floor: SigV4Auth + urllib3 POST", "floor: boto3 sesv2 send_email")


def _module():
    """The benchmark script as a module (benchmarks/ is not a package), loaded once."""
    if "send_path_cpu" not in sys.modules:
        spec = importlib.util.spec_from_file_location("send_path_cpu", SCRIPT)
        sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up there
        spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules["send_path_cpu"]


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def _rows(section: str) -> dict[str, float]:
    """label -> first figure of each table row in one printed section."""
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\s{2}(.+?)\s{2,}(-?[\d,]+\.\d)", line)
        if match:
            rows[match.group(1).strip()] = float(match.group(2).replace(",", ""))
    return rows


def test_a_tiny_run_prints_every_stage_for_both_points_and_sends_every_row():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--emails", "200", "--rounds", "1", "--point", "both", "--baseline", "none",
         "--floor-emails", "50", "--redis-db", str(SETTINGS.test_redis_db)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    unbound = out.split("unbound: R = ")[1].split("latency: R = ")[0]
    latency = out.split("latency: R = ")[1].split("floor: single thread")[0]
    for section in (unbound, latency):
        rows = _rows(section)
        for label in STAGE_ROWS:  # a stage the boundaries stopped catching would read 0
            assert rows[label] > 0, (label, section)
        total = rows["send task process, total"]
        assert abs(sum(rows[label] for label in STAGE_ROWS) + rows["everything else"] - total) < 1.0, section
    for label in (*STAGE_ROWS, *OTHER_ROWS):
        assert label in out, label
    assert re.search(r"unbound round 1: .* ledger: 200 sent$", result.stderr, re.M), result.stderr
    assert re.search(r"latency round 1: .* ledger: 200 sent$", result.stderr, re.M), result.stderr
    assert "ledger: every row of every round `sent`: yes" in out


def test_nested_calls_are_counted_once_to_the_innermost_stage():
    bench = _module()
    clock = bench.StageClock()
    inner = clock.wrap("ledger", lambda: _burn(0.03))
    same_stage = clock.wrap("ledger", inner)  # Connection.execute -> Cursor.execute: one stage, one count

    def transport_send():
        _burn(0.02)
        same_stage()

    outer = clock.wrap("ses", transport_send)
    start = time.thread_time()
    outer()
    spent = time.thread_time() - start
    totals, calls = clock.totals()
    assert 0.03 <= totals["ledger"] < 0.045
    assert 0.02 <= totals["ses"] < 0.035
    assert totals["ledger"] + totals["ses"] <= spent
    assert calls == 2  # the nested same-stage call read no clock


def test_a_generator_is_timed_step_by_step_and_not_while_its_consumer_works():
    bench = _module()
    clock = bench.StageClock()

    def rows():
        for _ in range(3):
            _burn(0.01)
            yield 1

    for _ in clock.wrap("ledger", rows)():
        _burn(0.02)  # the consumer's own work: not the generator's stage
    totals, _ = clock.totals()
    assert 0.03 <= totals["ledger"] < 0.05
