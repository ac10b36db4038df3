"""Fill a daemon store with realistic usage rows, and pair a daemon by script.

    ids = seed_rows(home / "db.sqlite", 10_000)          # daemon stopped or running
    pair_daemon(d, cloud, "a@example.com", "password123", "acme")
    pair_daemon(d, cloud, ..., base_url=proxy.base_url)  # through a fault proxy
    with store_of_schema(db, 3) as old: ...               # a file as an older release left it

Rows go in through ``hm_agent.store.Store.insert_rows`` (the daemon's own
writer path), one transaction per 1,000 rows, each with a fresh uuid4 id and
``row_json = UsageRow(...).to_json()`` exactly as capture stores it.
"""

from __future__ import annotations

import random
import re
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from hm_agent import store as store_module
from hm_agent.store import Store, StoredRow
from hm_proto import UsageRow

# (provider, model, host, endpoint, $ per 1M input, $ per 1M output)
_MODELS = (
    ("openai", "gpt-4o-mini", "api.openai.com", "/v1/chat/completions", "0.15", "0.60"),
    ("openai", "gpt-4o", "api.openai.com", "/v1/chat/completions", "2.50", "10.00"),
    ("openai", "o3-mini", "api.openai.com", "/v1/responses", "1.10", "4.40"),
    ("anthropic", "claude-sonnet-4-5", "api.anthropic.com", "/v1/messages", "3.00", "15.00"),
    ("anthropic", "claude-haiku-4-5", "api.anthropic.com", "/v1/messages", "1.00", "5.00"),
    ("google", "gemini-2.5-flash", "generativelanguage.googleapis.com",
     "/v1beta/models/gemini-2.5-flash:generateContent", "0.30", "2.50"),
)
_MILLION = Decimal(1_000_000)
CHUNK = 1_000


@contextmanager
def store_of_schema(db: Path, version: int) -> Iterator[Store]:
    """A new store whose file is as the release of schema ``version`` made it: no migration
    after it, and auto_vacuum NONE (SQLite's default before schema 4). Rows written through
    the Store yielded go in as that release wrote them (its triggers)."""
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE placeholder (x)")  # a file with a table: the open's PRAGMA cannot apply
    conn.close()
    saved = store_module.MIGRATIONS
    try:
        store_module.MIGRATIONS = tuple(m for m in saved if m[0] <= version)
        store_module.SCHEMA_VERSION = version
        with Store(db) as old:
            yield old
    finally:
        store_module.MIGRATIONS = saved
        store_module.SCHEMA_VERSION = saved[-1][0]
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE placeholder")
    conn.commit()
    assert conn.execute("PRAGMA user_version").fetchone()[0] == version
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()


def make_row(rng: random.Random, ts: datetime) -> StoredRow:
    """One realistic stored row at ``ts`` (varied model, tokens, cost, stream)."""
    provider, model, host, endpoint, p_in, p_out = rng.choice(_MODELS)
    stream = rng.random() < 0.6
    input_tokens = rng.randint(20, 60_000)
    output_tokens = rng.randint(1, 4_000)
    cache_read = rng.randint(0, input_tokens // 2) if provider != "google" and rng.random() < 0.3 else None
    cache_write = rng.randint(0, 2_000) if provider == "anthropic" and rng.random() < 0.2 else None
    reasoning = rng.randint(0, output_tokens) if model.startswith("o3") else None
    priced = rng.random() < 0.97
    cost = None
    if priced:
        cost = format(
            (Decimal(input_tokens) * Decimal(p_in) + Decimal(output_tokens) * Decimal(p_out)) / _MILLION, "f"
        )
    latency = rng.randint(150, 30_000)
    row = UsageRow(
        id=str(uuid.uuid4()),
        ts=ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        provider=provider,
        model=model,
        endpoint=endpoint,
        status=200 if rng.random() < 0.98 else rng.choice((400, 429, 500)),
        stream=stream,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=reasoning,
        cost_usd=cost,
        price_version="0.0.61" if priced else "unpriced",
        latency_ms=latency,
        ttfb_ms=rng.randint(80, latency) if stream else None,
    )
    return StoredRow(
        id=row.id, ts=row.ts, provider=provider, model=model, host=host, endpoint=endpoint,
        status=row.status, stream=stream, input_tokens=input_tokens, output_tokens=output_tokens,
        cache_read_tokens=cache_read, cache_write_tokens=cache_write, reasoning_tokens=reasoning,
        cost_usd=cost, price_version=row.price_version, latency_ms=latency, ttfb_ms=row.ttfb_ms,
        flags="" if priced else "unknown_model", row_json=row.to_json(),
    )


def seed_rows(db_path: Path, n: int, *, day: str = "2026-11-24", start: datetime | None = None,
              seed: int | None = None) -> list[str]:
    """Insert ``n`` unsynced rows into the store at ``db_path``; return their ids in ts order.

    Timestamps start at ``start`` (default ``day`` 00:00:00 UTC) and step by
    a few milliseconds, staying within one day for n up to ~10 million.
    """
    rng = random.Random(seed)
    at = start or datetime.fromisoformat(day).replace(tzinfo=UTC)
    step = timedelta(milliseconds=7)
    ids: list[str] = []
    with Store(Path(db_path)) as store:
        for first in range(0, n, CHUNK):
            chunk = []
            for _ in range(min(CHUNK, n - first)):
                chunk.append(make_row(rng, at))
                at += step
            added = store.insert_rows(chunk)
            if added != len(chunk):
                raise RuntimeError(f"store added {added} of {len(chunk)} rows")
            ids.extend(r.id for r in chunk)
    return ids


_CODE = re.compile(r"Pairing code:\s*([A-Z0-9]{4}-[A-Z0-9]{4})")


def pair_daemon(d: Any, cloud: Any, email: str, password: str, workspace: str, *,
                base_url: str | None = None, timeout: float = 60.0) -> str:
    """Pair daemon ``d`` via `cloud connect --no-browser` plus a scripted approval.

    ``base_url`` defaults to ``cloud.base_url`` (pass a fault proxy's URL to
    put the proxy between the daemon and the backend). Returns the CLI output;
    raises RuntimeError with the output if pairing does not end with exit 0.
    """
    url = base_url or cloud.base_url
    proc = subprocess.Popen(
        [sys.executable, "-m", "hm_cli.main", "cloud", "connect", "--no-browser", "--base-url", url],
        env=d.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    out = ""
    try:
        code = None
        deadline = time.monotonic() + timeout
        assert proc.stdout is not None
        while code is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            out += line
            found = _CODE.search(line)
            if found:
                code = found.group(1)
        if code is None:
            proc.kill()
            rest, err = proc.communicate(timeout=10)
            raise RuntimeError(f"no pairing code from `cloud connect`: {out}{rest}{err}")
        approved = cloud.approve(code, workspace, cloud.login_session(email, password))
        if approved.status_code != 200:
            raise RuntimeError(f"approve failed: {approved.status_code} {approved.text}")
        rest, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        out += rest
        if proc.returncode != 0:
            raise RuntimeError(f"`cloud connect` exited {proc.returncode}: {out}{err}")
        return out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
