"""The spend report as a person sees it: the terminal table at 80 columns, the
self-contained HTML page in Chromium, and the shared chart module (hm_charts)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from hm_agent.store import Store, StoredRow
from tests.support.daemon import daemon_env, run_cli
from tests.test_cloud_browser import screenshot

RANGE = ("--from", "2026-11-20", "--to", "2026-11-26")


def _row(i: int, day: str, model: str, cost: str | None, *, status: int = 200, flags: str = "",
         host: str = "api.openai.com", provider: str = "openai", tokens: bool = True) -> StoredRow:
    return StoredRow(
        id=f"00000000-0000-4000-8000-{i:012d}", ts=f"{day}T10:00:00.000Z", provider=provider, model=model,
        host=host, endpoint="/v1/chat/completions", status=status, stream=False,
        input_tokens=1000 if tokens else None, output_tokens=100 if tokens else None, cache_read_tokens=None,
        cache_write_tokens=None, reasoning_tokens=None, cost_usd=cost, price_version="t", latency_ms=1,
        ttfb_ms=1, flags=flags, row_json=b"{}",
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    rows = [
        _row(1, "2026-11-20", "gpt-4o-mini-2024-07-18", "0.25"),
        _row(2, "2026-11-21", "gpt-4o-mini-2024-07-18", "0.50"),
        _row(3, "2026-11-23", "claude-sonnet-4-20250514", "2.00", provider="anthropic", host="api.anthropic.com"),
        _row(4, "2026-11-26", "claude-sonnet-4-20250514", "1.00", provider="anthropic", host="api.anthropic.com"),
        _row(5, "2026-11-24", "my-finetune", None, flags="unknown_model", host="127.0.0.2:11434"),
        _row(6, "2026-11-24", "gpt-4o-mini-2024-07-18", None, flags="usage_missing", tokens=False),
        _row(7, "2026-11-25", "gpt-4o-mini-2024-07-18", None, status=401, tokens=False),
        _row(8, "2026-11-25", "gpt-5-typo", None, status=404, tokens=False),
        _row(9, "2026-11-15", "gpt-4o-mini-2024-07-18", "3.00"),  # the previous 7 days
    ]
    with Store(home / "db.sqlite") as store:
        store.insert_rows(rows)
    return home


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(home, *args, env=daemon_env(home, extra={"COLUMNS": "80"}))


def test_terminal_report_at_80_columns(home: Path) -> None:
    res = cli(home, "report", *RANGE)
    assert res.returncode == 0, res.stderr
    assert res.stdout == """\
LLM spend 2026-11-20 → 2026-11-26 by model
┏━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━┳━━━━━━━━┳━━━━━━━━━━━━━━━━━┳━━━━━━━━━┓
┃ model                    ┃ calls ┃ errors ┃      cost (USD) ┃ per day ┃
┡━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━╇━━━━━━━━╇━━━━━━━━━━━━━━━━━╇━━━━━━━━━┩
│ claude-sonnet-4-20250514 │     2 │        │           $3.00 │    █  ▅ │
│ gpt-4o-mini-2024-07-18   │     4 │      1 │ $0.75 + unknown │ ▅█      │
│ gpt-5-typo               │     1 │      1 │              $0 │         │
│ my-finetune              │     1 │        │   unknown price │         │
├──────────────────────────┼───────┼────────┼─────────────────┼─────────┤
│ total                    │     8 │      2 │ $3.75 + unknown │ ▂▃ █  ▅ │
└──────────────────────────┴───────┴────────┴─────────────────┴─────────┘
previous 7 days (2026-11-13 → 2026-11-19): $3.00, 1 call; now +25% in cost, +700% in calls
! 1 call(s) have an unknown price (a model the price library does not know): not counted as $0. Add a [[pricing.override]] in config.toml.
! 1 call(s) carried no token counts (usage_missing): e.g. an OpenAI stream without stream_options.include_usage. Their tokens and cost are not in the totals.
! 2 call(s) were errors (HTTP 4xx/5xx or no answer, e.g. a wrong API key or model name): counted as errors, not as spend or unknown price.
(input, output, cache read, cache write left out at 80 columns: see --json, --csv or --html)
"""


def test_terminal_report_by_day_and_host_keep_their_keys(home: Path) -> None:
    by_day = cli(home, "report", *RANGE, "--by", "day").stdout
    assert "│ 2026-11-23 │     1 │        │ 1,000 │           $2.00 │ ████████████ │" in by_day
    assert "│ 2026-11-26 │     1 │        │ 1,000 │           $1.00 │ ██████       │" in by_day
    assert "│ 2026-11-25 │     2 │      2 │     0 │              $0 │              │" in by_day
    by_host = cli(home, "report", *RANGE, "--by", "host").stdout
    assert "│ 127.0.0.2:11434   │" in by_host and "…" not in by_host
    wide = run_cli(home, "report", *RANGE, env=daemon_env(home, extra={"COLUMNS": "160"})).stdout
    assert "cache write" in wide and "left out" not in wide


def test_json_and_csv_keep_their_shape_and_count_errors_apart(home: Path) -> None:
    rep = json.loads(cli(home, "report", *RANGE, "--json").stdout)
    assert set(rep) == {"from_date", "to_date", "by", "where", "groups", "total"}
    assert set(rep["total"]) == {"model", "calls", "input_tokens", "output_tokens", "cache_read_tokens",
                                 "cache_write_tokens", "reasoning_tokens", "cost_usd", "priced_calls",
                                 "unknown_price_calls", "usage_missing_calls", "error_calls"}
    total = rep["total"]
    assert (total["calls"], total["priced_calls"], total["unknown_price_calls"], total["usage_missing_calls"],
            total["error_calls"]) == (8, 4, 1, 1, 2)
    typo = next(g for g in rep["groups"] if g["model"] == "gpt-5-typo")
    assert typo["error_calls"] == 1 and typo["unknown_price_calls"] == 0
    header = cli(home, "report", *RANGE, "--csv").stdout.splitlines()[0]
    assert header == ("model,calls,input_tokens,output_tokens,cache_read_tokens,cache_write_tokens,"
                      "reasoning_tokens,cost_usd,priced_calls,unknown_price_calls,usage_missing_calls,error_calls")


def test_html_report_is_self_contained_and_escaped(home: Path, tmp_path: Path) -> None:
    with Store(home / "db.sqlite") as store:
        store.insert_rows([_row(20, "2026-11-22", "<script>alert(1)</script>", "0.10")])
    out = tmp_path / "spend.html"
    res = cli(home, "report", *RANGE, "--html", str(out))
    assert res.returncode == 0 and res.stdout.startswith(f"● wrote {out}")
    page = out.read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    for external in ("http://", "https://", "<link", "src="):
        assert external not in page.replace('xmlns="http://www.w3.org/2000/svg"', ""), external
    assert cli(home, "report", *RANGE, "--html", "-").stdout == page


def test_html_report_empty_state(tmp_path: Path) -> None:
    res = run_cli(tmp_path / "home", "report", "--html", "-")
    assert "No spend in this range." in res.stdout and "No calls in this range." in res.stdout


def test_dashboard_writes_a_private_file_without_a_display(home: Path) -> None:
    env = daemon_env(home)
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    res = run_cli(home, "dashboard", "--from", "2026-11-20", "--to", "2026-11-26", env=env)
    assert res.returncode == 0, res.stderr
    first, second = res.stdout.splitlines()
    path = Path(first.removeprefix("● wrote "))
    try:
        assert second == f"  Open it in a browser: file://{path}"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert '<g class="bar">' in path.read_text()
    finally:
        path.unlink()


@pytest.mark.parametrize("width", [390, 1280])
def test_html_report_in_chromium(home: Path, tmp_path: Path, browser: Any, width: int) -> None:
    out = tmp_path / "spend.html"
    cli(home, "report", *RANGE, "--html", str(out))
    context = browser.new_context(viewport={"width": width, "height": 900})
    try:
        page = context.new_page()
        page.goto(out.as_uri())
        assert page.locator(".hm-chart svg g.bar").count() == 7
        assert page.locator(".hm-chart svg g.bar rect").count() == 4
        assert page.locator(".hm-legend li").count() == 2
        assert page.get_by_role("table", name="Spend by model").is_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        box = page.locator(".hm-chart svg").bounding_box()
        assert box is not None and box["width"] > width * 0.6
        screenshot(page, tmp_path, f"report-{width}")  # kept in $HM_CLOUD_SCREENSHOTS when set
    finally:
        context.close()


# -- hm_charts ------------------------------------------------------------------------


def test_chart_pieces() -> None:
    from hm_charts import (
        Series,
        dollar_ticks,
        format_usd,
        hbar,
        sparkline,
        stacked_bars,
        top_series,
    )

    assert dollar_ticks(Decimal("1.52")) == [Decimal(0), Decimal("0.5"), Decimal(1), Decimal("1.5"), Decimal(2)]
    assert dollar_ticks(0) == [0, 1]
    assert format_usd(Decimal("0.00002")) == "<$0.0001" and format_usd(Decimal("1234.5")) == "$1,234"
    assert sparkline([0, 1, 4, 2]) == " ▃█▅" and sparkline([1] * 14, cells=7) == "███████"
    assert hbar(3, 10, 12) == "███▌" and hbar(0, 10, 12) == ""
    series = top_series({f"m{i}": [i] for i in range(10)}, limit=3)
    assert [s.name for s in series] == ["m9", "m8", "m7", "other (7)"]
    chart = stacked_bars(["d1", "d2"], [Series("a&b", [1, 0]), Series("c", [2, 3])], title="T<")
    assert "<title>d1 · a&amp;b: $1.00</title>" in chart and "<title>d2: $3.00</title>" in chart
    assert ">$3<" in chart or ">$4<" in chart  # a dollar tick at the top
    tokens = stacked_bars(["d1"], [Series("m", [1500])], title="Tokens", value_format=lambda v: f"{v:,} tokens")
    assert "<title>d1: 1,500 tokens</title>" in tokens and ">1,500 tokens<" in tokens and "$" not in tokens
    empty = stacked_bars(["d1"], [], title="T")
    assert "No spend in this range." in empty and "<rect" not in empty


def test_hm_charts_imports_neither_side() -> None:
    code = ("import sys, hm_charts; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('hm_agent', 'hm_cli', 'hm_cloud', 'starlette', 'sqlalchemy', 'rich', 'click')]; print(bad)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"
