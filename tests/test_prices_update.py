"""`halton-meter prices update` and `report --reprice`, offline: a local HTTP server
serves a newer genai-prices data file that knows models the pinned package does not
(Claude Code's and Codex's defaults in the issue); rows keep their price_version and
unknown costs are priced afterwards, in the real SQLite store."""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import genai_prices
import pytest

from tests.support.daemon import run_cli

NEW_MODELS = {"gpt-6.2-sol": ("openai", "2", "8"), "claude-opus-4-8": ("anthropic", "5", "25")}


def newer_data() -> bytes:
    """A data file in genai-prices' published format (prices/data.json)."""
    providers = []
    for provider, name, pattern in (("openai", "OpenAI", r"api\.openai\.com"),
                                    ("anthropic", "Anthropic", r"api\.anthropic\.com")):
        models = [{"id": m, "match": {"equals": m}, "prices": {"input_mtok": float(i), "output_mtok": float(o)}}
                  for m, (p, i, o) in NEW_MODELS.items() if p == provider]
        providers.append({"id": provider, "name": name, "api_pattern": pattern, "models": models})
    return json.dumps(providers).encode()


class _Serve(BaseHTTPRequestHandler):
    bodies: dict[str, tuple[int, bytes]] = {}

    def do_GET(self) -> None:  # noqa: N802
        status, body = self.bodies.get(self.path, (404, b"not found"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Serve.bodies = {"/data.json": (200, newer_data()), "/broken.json": (200, b'[{"id": "x"}]'),
                     "/notjson": (200, b"<html>moved</html>")}
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Serve)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def _store_rows(home: Path) -> dict[str, str]:
    """Rows as the daemon's writer makes them: two unknown models (one already synced), a priced
    model, and a 401 error row."""
    from hm_agent.capture import CapturedUsage
    from hm_agent.store import open_store
    from hm_agent.writer import CapturedCall, build_row

    def call(model: str, provider: str, status: int = 200, tokens: bool = True) -> Any:
        usage = CapturedUsage(provider, model, f"api.{provider}.com", "/v1/chat/completions", status, False,
                              input_tokens=1000 if tokens else None, output_tokens=500 if tokens else None,
                              dialect="openai" if provider == "openai" else "anthropic")
        return build_row(CapturedCall(str(uuid.uuid4()), "2026-11-29T10:00:00.000Z", usage, 100, 50), [])

    rows = {"sol": call("gpt-6.2-sol", "openai"), "opus": call("claude-opus-4-8", "anthropic"),
            "known": call("gpt-4o", "openai"), "error": call("gpt-6.2-sol", "openai", 401, tokens=False)}
    home.mkdir(parents=True, exist_ok=True)
    with open_store(home / "db.sqlite") as store:
        store.insert_rows(list(rows.values()))
        store.mark_synced([rows["opus"].id], "2026-11-29T10:01:00Z")
    return {k: r.id for k, r in rows.items()}


def _db(home: Path) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(home / "db.sqlite") as conn:
        conn.row_factory = sqlite3.Row
        return {r["id"]: dict(r) for r in conn.execute("SELECT * FROM requests")}


def test_update_then_reprice_unknown_costs(hm_home: Path, server: str) -> None:
    ids = _store_rows(hm_home)
    before = _db(hm_home)
    bundled = f"genai-prices-{genai_prices.__version__}"
    assert before[ids["sol"]]["cost_usd"] is None and "unknown_model" in before[ids["sol"]]["flags"]
    assert before[ids["sol"]]["price_version"] == bundled

    res = run_cli(hm_home, "prices", "update", "--url", f"{server}/data.json", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["changed"] is True and out["models"] == 2 and out["version"].startswith("data-")
    stored = hm_home / "prices" / f"{out['version']}.json"
    assert stored.read_bytes() == newer_data()
    assert (hm_home / "prices" / "current").read_text().strip() == out["version"]
    again = json.loads(run_cli(hm_home, "prices", "update", "--url", f"{server}/data.json", "--json").stdout)
    assert again["changed"] is False and again["version"] == out["version"]

    res = run_cli(hm_home, "report", "--reprice", "--json")
    assert res.returncode == 0, res.stderr
    assert "Repriced 2 rows" in res.stderr and "1 of them were already synced" in res.stderr
    after = _db(hm_home)
    version = f"{bundled}+{out['version']}"
    for key, (i, o) in (("sol", ("2", "8")), ("opus", ("5", "25"))):
        row = after[ids[key]]
        want = (1000 * Decimal(i) + 500 * Decimal(o)) / 1_000_000
        assert Decimal(row["cost_usd"]) == want and row["price_version"] == version
        assert "unknown_model" not in row["flags"].split()
        uploaded = json.loads(row["row_json"])
        assert Decimal(uploaded["cost_usd"]) == want and uploaded["price_version"] == version
    # A known cost and an error row are never touched.
    for key in ("known", "error"):
        assert after[ids[key]] == before[ids[key]]
    report = json.loads(res.stdout)
    assert report is not None
    status = json.loads(run_cli(hm_home, "prices", "status", "--json").stdout)
    assert status["price_version"] == version and status["stored"] == out["version"]


def test_new_rows_use_the_update_without_a_restart(hm_home: Path, server: str) -> None:
    from hm_agent.capture import CapturedUsage, pricing

    usage = CapturedUsage("openai", "gpt-6.2-sol", "api.openai.com", "/v1/responses", 200, False,
                          input_tokens=1000, output_tokens=500, dialect="openai")
    assert pricing.price(usage)[0] is None
    assert run_cli(hm_home, "prices", "update", "--url", f"{server}/data.json").returncode == 0
    pricing._next_check = 0.0  # the writer looks every CHECK_EVERY_S seconds
    try:
        cost, version = pricing.price(usage)
        assert cost == "0.006" and version.endswith((hm_home / "prices" / "current").read_text().strip())
    finally:
        (hm_home / "prices" / "current").unlink()
        pricing._next_check = 0.0
        pricing.price(usage)  # back to the bundled data for the other tests in this process
    assert pricing.price_version() == f"genai-prices-{genai_prices.__version__}"


@pytest.mark.parametrize(("path", "words"), [
    ("/broken.json", "not a genai-prices data file"), ("/notjson", "not a genai-prices data file"),
    ("/missing.json", "answered 404"),
])
def test_a_bad_update_says_so_and_changes_nothing(hm_home: Path, server: str, path: str, words: str) -> None:
    res = run_cli(hm_home, "prices", "update", "--url", f"{server}{path}")
    assert res.returncode == 1
    lines = [line for line in res.stderr.strip().splitlines() if not line.startswith("Fetching")]
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in res.stderr
    assert not (hm_home / "prices" / "current").exists()
