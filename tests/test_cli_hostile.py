"""What the CLI prints from outside (issue 10, items 16 and 17): escaped, one line, never a traceback.

Outside strings (model names, hosts, server messages) reach the terminal as
text: rich markup is escaped and control characters are removed. A damaged
database gives the documented shape with a hint, and `--json` stays JSON.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import daemon_env, run_cli

HOSTILE_MODEL = "[/x] markup \x1b[2J\x1b]0;pwned\x07 \u202eevil"
HOSTILE_HOST = "[bold red]host[/] \x9b31m"


def _today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def _row(model: str, host: str, cost: str | None) -> Any:
    from hm_agent.store import StoredRow

    ts = f"{_today()}T10:00:00.000Z"
    row_id = str(uuid.uuid4())
    return StoredRow(
        id=row_id, ts=ts, provider="openai", model=model, host=host, endpoint="/v1/chat/completions",
        status=200, stream=False, input_tokens=10, output_tokens=5, cache_read_tokens=None,
        cache_write_tokens=None, reasoning_tokens=None, cost_usd=cost, price_version="test",
        latency_ms=5, ttfb_ms=None, flags="" if cost else "unknown_model",
        row_json=json.dumps({"id": row_id}).encode(),
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    return home


def _seed(home: Path, *rows: Any) -> None:
    from hm_agent.store import Store

    with Store(home / "db.sqlite") as store:
        store.insert_rows(list(rows))


def _assert_inert(text: str) -> None:
    """Nothing in ``text`` acts on a terminal."""
    for bad in ("\x1b", "\x07", "\x9b", "\u202e", "Traceback"):
        assert bad not in text, (bad, text)


# -- item 16 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["model", "host"])
def test_report_shows_hostile_names_as_text(home: Path, by: str) -> None:
    _seed(home, _row(HOSTILE_MODEL, HOSTILE_HOST, None), _row("gpt-4o", "api.openai.com", "0.5"))
    done = run_cli(home, "report", "--by", by)
    assert done.returncode == 0, done.stderr
    _assert_inert(done.stdout + done.stderr)
    shown = "[/x] markup" if by == "model" else "red]host[/]"
    assert shown in done.stdout
    # The hint names the TOML table literally (it used to print "Add a [] in config.toml").
    assert "Add a [[pricing.override]] in config.toml" in done.stdout


def test_report_csv_and_json_carry_no_terminal_controls(home: Path) -> None:
    _seed(home, _row(HOSTILE_MODEL, HOSTILE_HOST, "0.1"))
    as_csv = run_cli(home, "report", "--csv")
    assert as_csv.returncode == 0 and "[/x] markup" in as_csv.stdout
    _assert_inert(as_csv.stdout)
    as_json = run_cli(home, "report", "--json")
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout)["groups"][0]["model"] == HOSTILE_MODEL  # data kept exact, escaped by JSON
    _assert_inert(as_json.stdout)


def test_clean_and_safe_are_the_one_helper() -> None:
    from hm_cli._ui import clean, safe

    assert clean("a\x1b[2Jb\r\nc\td\u2066e") == "a[2Jb  c de"
    assert clean("x" * 600).endswith("…") and len(clean("x" * 600)) == 501
    assert safe("[/x] [[pricing.override]]") == "\\[/x] [\\[pricing.override]]"


def test_status_render_strips_controls_from_daemon_and_server_strings(capsys: pytest.CaptureFixture[str]) -> None:
    from hm_cli.status import render

    evil = "server said [red]\x1b[2Jboom\x1b]0;x\x07"
    render({
        "daemon": {"running": True, "healthy": False, "pid": 1, "backend": "asyncio\x1b[2J", "uptime_s": 3,
                   "problems": [evil]},
        "proxy": {"bound": True, "host": "127.0.0.1", "port": 8090},
        "rows": {"day": _today(), "today": 1, "pending": 0, "dropped": 0},
        "ca_cert": "/tmp/ca.pem\x1b[2J",
        "cloud": {"state": "DEGRADED\x1b[2J", "paused_reason": evil},
        "components": {"cloud": {"state": "crashed", "error": evil}},
        "config_warnings": [evil],
    })
    out = capsys.readouterr().out
    _assert_inert(out)
    assert out.count("server said [red][2Jboom") == 4  # reason, crash, problem, warning


def test_errors_from_outside_are_one_inert_line(home: Path) -> None:
    """fail() is the path of every server and daemon message: control characters go (line breaks stay)."""
    import click
    from click.testing import CliRunner

    from hm_cli._ui import fail

    @click.command()
    def boom() -> None:
        fail("the backend said: \x1b[2J[/x]\nsecond line")

    result = CliRunner().invoke(boom)
    assert result.exit_code == 1
    assert result.output == "halton-meter: error: the backend said: [2J[/x]\nsecond line\n"


# -- item 17 ---------------------------------------------------------------------------------


def _damage(home: Path, kind: str) -> None:
    db = home / "db.sqlite"
    if kind == "garbage":
        db.write_bytes(os.urandom(8192))
        return
    from hm_agent.store import Store

    with Store(db) as store:
        store.insert_rows([_row("gpt-4o", "api.openai.com", "0.5")])
        store.set_cloud_state(workspace_slug="acme", workspace_id="w", paused=0)
        store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    if kind == "not-utf8":
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("UPDATE cloud_state SET workspace_slug = CAST(x'ff41' AS TEXT)")
        conn.execute("UPDATE requests SET model = CAST(x'c3' AS TEXT), provider = CAST(x'ff' AS TEXT)")
        conn.close()
    elif kind == "truncated":
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("kind", ["garbage", "truncated", "not-utf8"])
def test_every_store_read_of_the_cli_survives_a_damaged_database(home: Path, kind: str) -> None:
    (home / "config.toml").write_text('[cloud]\nenabled = true\nbase_url = "http://127.0.0.1:9"\n\n'
                                      '[[budgets]]\nname = "monthly"\nlimit_usd = 100\nperiod = "month"\n')
    _damage(home, kind)
    env = daemon_env(home)
    st = run_cli(home, "status", "--json", env=env)
    shape = json.loads(st.stdout)
    assert st.returncode == 1 and set(shape) >= {"daemon", "proxy", "rows", "cloud"}
    cloud = run_cli(home, "cloud", "status", "--json", env=env)
    snap = json.loads(cloud.stdout)
    assert cloud.returncode == 0 and snap["state"] in ("DEGRADED", "PAUSED")
    for args in (("status",), ("cloud", "status"), ("report",), ("report", "--json"), ("doctor",),
                 ("budget", "status"), ("budget", "status", "--json")):
        done = run_cli(home, *args, env=env)
        assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, (args, done.stderr)
        _assert_inert(done.stdout + done.stderr)
    if kind == "not-utf8":  # readable apart from the bad bytes: shown with U+FFFD, nothing refused
        assert snap["workspace_slug"] == "\ufffdA" and snap["unsynced_rows"] == 1
        assert run_cli(home, "report", env=env).returncode == 0
    else:
        problems = " ".join(shape["daemon"]["problems"])
        assert "cannot read" in problems and "move it away" in problems
        assert shape["rows"]["today"] is None
        assert snap["state"] == "DEGRADED" and "move it away" in snap["hint"] and snap["unsynced_rows"] is None
        rep = run_cli(home, "report", env=env)
        assert rep.returncode == 1 and rep.stderr.count("\n") == 1 and "move it away" in rep.stderr
    # `cloud disconnect` still revokes (best effort) and wipes the files.
    gone = run_cli(home, "cloud", "disconnect", env=env)
    assert "Traceback" not in gone.stderr and "credentials wiped" in gone.stdout, gone.stderr
