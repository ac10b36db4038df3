"""Every benchmark runs at a tiny size and ends with its headline line.

The headline is the LAST line a benchmark prints: ``<what> vs <baseline>: <figures>``
with at least one figure and a same-run ratio written ``x1.23``. These runs only
check that shape (and that the benchmark still works); the figures at these sizes
mean nothing.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEADLINE = re.compile(r"^[^:\n]+ vs [^:\n]+: (?=.*\d)(?=.*\bx\d+(\.\d+)?\b)")

# benchmark -> (arguments for a tiny run, needs processes: marked slow)
QUICK = {
    "bench_batch.py": (["--rows", "2000", "--repeats", "1", "--explore"], False),
    "bench_cloud_retention.py": (["--rows", "3000", "--baseline-s", "0.3"], False),
    "bench_capture.py": (["--events", "200", "--calls", "2"], True),
    "bench_dashboard.py": (["--rows", "5000", "--repeats", "2"], True),
    "bench_fleet.py": (["--machines", "20"], True),  # exit 1 on any lost or duplicated row
    "bench_ingest.py": (["--rows", "2000", "--rounds", "1"], True),
    "bench_limits.py": (["--logins", "20", "--approvals", "30", "--account-logins", "15"], True),
    "bench_rollups.py": (["--rows", "5000"], True),
    "bench_report.py": (["--rows", "3000", "--repeats", "1"], True),
    "bench_proxy.py": (["--requests", "40", "--warmup", "8", "--concurrency", "2", "--rounds", "1"], True),
    "bench_sync.py": (["--rows", "2000", "--rounds", "1"], True),
    "bench_upgrade.py": (["--rows", "2000", "--repeats", "1"], True),
}


def test_every_benchmark_has_a_quick_run() -> None:
    assert sorted(p.name for p in (ROOT / "benchmarks").glob("bench_*.py")) == sorted(QUICK)


@pytest.mark.parametrize("line", [
    "daemon vs bare mitmdump: p50 -1.29 ms, req/s x1.36, CPU/request x0.77",
    "BatchBuilder zstd vs json.dumps+gzip6: 803,959 vs 113,507 rows/s, x7.1",
])
def test_headline_shape_accepts(line: str) -> None:
    assert HEADLINE.match(line)


@pytest.mark.parametrize("line", [
    '{"direct": {"p50_ms": 1.2}}',
    "ratio default (zstd) / baseline rows/s: 7.1x",
    "daemon vs bare mitmdump: p50 -1.29 ms",
    "row count check: OK",
])
def test_headline_shape_rejects(line: str) -> None:
    assert not HEADLINE.match(line)


def run_quick(name: str) -> None:
    args, _ = QUICK[name]
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "skipped" not in out.stdout, out.stdout
    last = out.stdout.rstrip("\n").splitlines()[-1]
    assert HEADLINE.match(last), f"{name} ends with {last!r}, not a headline"


@pytest.mark.parametrize("name", [n for n, (_, slow) in QUICK.items() if not slow])
def test_benchmark_ends_with_its_headline(name: str) -> None:
    run_quick(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, (_, slow) in QUICK.items() if slow])
def test_process_benchmark_ends_with_its_headline(name: str) -> None:
    run_quick(name)
