"""Newer price data: genai-prices' published data file, fetched with its own
updater (`genai_prices.update_prices.UpdatePrices`) and kept in the home.

    <home>/prices/<label>.json   one file per version, exactly as fetched
    <home>/prices/current        the label in use

A label is ``data-YYYY-MM-DD-<sha256 prefix>``; rows priced with it carry
``price_version = "genai-prices-<package version>+<label>"``. The daemon's
writer notices a new `current` within seconds (pricing.py); a file that does
not validate is never made current, and a stored file that stops validating
falls back to the data bundled with the package.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .home import HomePaths, read_regular, write_atomic

MAX_DATA_BYTES = 64 * 1024 * 1024
_LABEL = re.compile(r"^data-\d{4}-\d{2}-\d{2}-[0-9a-f]{12}$")


class PricesError(Exception):
    """The price data could not be fetched or used; the message says why and what to do."""


@dataclass(frozen=True)
class Update:
    label: str
    path: Path
    providers: int
    models: int
    changed: bool  # False: the fetched data is the version already in use


def prices_dir(hp: HomePaths) -> Path:
    return hp.home / "prices"


def current_label(hp: HomePaths) -> str | None:
    try:
        label = read_regular(prices_dir(hp) / "current", 4096).decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return label if _LABEL.match(label) else None


def current_mtime(hp: HomePaths) -> float | None:
    try:
        return os.stat(prices_dir(hp) / "current").st_mtime
    except OSError:
        return None


def validate(content: bytes) -> Any:
    """genai-prices' providers from a data file (its own schema). Raises PricesError."""
    from genai_prices import data

    try:
        providers = data.providers_schema.validate_json(content)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PricesError(f"the price data is not a genai-prices data file ({first[:200]})") from None
    if not providers:
        raise PricesError("the price data lists no providers")
    return providers


def load_current(hp: HomePaths) -> tuple[str, Any] | None:
    """(label, providers) of the stored version in use, or None (use the bundled data)."""
    label = current_label(hp)
    if label is None:
        return None
    try:
        content = read_regular(prices_dir(hp) / f"{label}.json", MAX_DATA_BYTES)
    except OSError:  # missing, not a regular file, or over MAX_DATA_BYTES: the bundled data
        return None
    return label, validate(content)


def _fetcher(url: str | None, timeout: float) -> Any:
    """genai-prices' UpdatePrices, reading at most MAX_DATA_BYTES and keeping the raw file."""
    import httpx
    from genai_prices import data_snapshot
    from genai_prices.update_prices import DEFAULT_UPDATE_URL, UpdatePrices

    class BoundedUpdate(UpdatePrices):
        raw: bytes = b""

        def fetch(self) -> data_snapshot.DataSnapshot | None:
            chunks: list[bytes] = []
            size = 0
            with httpx.stream("GET", self.url, timeout=self.request_timeout, follow_redirects=True,
                              **_proxy_settings()) as r:
                r.raise_for_status()
                for chunk in r.iter_bytes():
                    size += len(chunk)
                    if size > MAX_DATA_BYTES:
                        raise PricesError(f"{self.url} sent more than {MAX_DATA_BYTES // 2**20} MiB; "
                                          "not a price data file")
                    chunks.append(chunk)
            self.raw = b"".join(chunks)
            return data_snapshot.DataSnapshot(validate(self.raw), from_auto_update=True)

    return BoundedUpdate(url=url or DEFAULT_UPDATE_URL,
                         request_timeout=httpx.Timeout(timeout=timeout, connect=min(timeout, 10.0)))


def _proxy_settings() -> dict[str, Any]:
    """The shell's proxy variables, unless `halton-meter env` pointed them at the meter itself
    (the data host is not an LLM API: the meter would only tunnel it, and not while stopped);
    then the proxy the shell had before, if any."""
    proxy = os.environ.get("https_proxy") or os.environ.get("HTTPS_PROXY") or ""
    if os.environ.get("HALTON_METER_ENV") != "1" or not proxy.startswith(("http://127.", "http://localhost")):
        return {"trust_env": True}
    saved = os.environ.get("HALTON_METER_SAVED_https_proxy") or os.environ.get("HALTON_METER_SAVED_HTTPS_PROXY")
    return {"trust_env": False, "proxy": saved or None}


def update(hp: HomePaths, url: str | None = None, timeout: float = 30.0) -> Update:
    """Fetch the published data, store it as a new version and make it current. Raises PricesError."""
    import httpx

    fetcher = _fetcher(url, timeout)
    try:
        snapshot = fetcher.fetch()
    except PricesError:
        raise
    except httpx.HTTPStatusError as exc:
        raise PricesError(f"{fetcher.url} answered {exc.response.status_code}; try again later, "
                          "or pass --url with a mirror of genai-prices' data.json") from None
    except httpx.HTTPError as exc:
        raise PricesError(f"cannot fetch {fetcher.url}: {exc or type(exc).__name__}. Check the network "
                          "(or the proxy variables), or pass --url") from None
    assert snapshot is not None
    raw: bytes = fetcher.raw
    digest = hashlib.sha256(raw).hexdigest()[:12]
    previous = current_label(hp)
    if previous is not None and previous.endswith(digest):
        label = previous
    else:
        label = f"data-{datetime.date.today().isoformat()}-{digest}"
    folder = prices_dir(hp)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{label}.json"
    if not path.exists():
        write_atomic(path, raw, 0o644)
    if previous != label:
        write_atomic(folder / "current", label.encode() + b"\n", 0o644)
    models = sum(len(p.models) for p in snapshot.providers)
    return Update(label, path, len(snapshot.providers), models, previous != label)


@dataclass(frozen=True)
class Repriced:
    repriced: int  # rows that now have a cost
    still_unknown: int  # rows the data in use does not price either
    synced: int  # of the repriced rows, those the cloud already holds with an unknown cost
    price_version: str


_DIALECT_BY_ENDPOINT = (("/messages", "anthropic"), ("generateContent", "gemini"))


def reprice_unknown(hp: HomePaths, overrides: list[dict[str, Any]]) -> Repriced:
    """Price the rows whose cost is unknown with the price data in use now.

    Only unknown costs change (a known cost is never rewritten). The row's
    api.md JSON is updated too, so rows not yet synced upload with the cost;
    rows the cloud already holds keep their unknown cost there (the cloud
    never overwrites a row it has).
    """
    import dataclasses
    import json

    from hm_proto import UsageRow

    from .capture.pricing import flags_after_pricing, price, reload_data
    from .capture.tap import CapturedUsage
    from .store import open_store

    reload_data()
    updates: list[tuple[str, str, str, bytes, str]] = []
    synced = unknown = 0
    version = ""
    with open_store(hp.db) as store:
        for row in store.unpriced_rows():
            endpoint = str(row["endpoint"])
            dialect = next((d for marker, d in _DIALECT_BY_ENDPOINT if marker in endpoint), "openai")
            flags = frozenset(str(row["flags"] or "").split()) - {"unknown_model"}
            usage = CapturedUsage(
                provider=row["provider"], model=row["model"], host=row["host"] or "", endpoint=endpoint,
                status=row["status"], stream=bool(row["stream"]), input_tokens=row["input_tokens"],
                output_tokens=row["output_tokens"], cache_read_tokens=row["cache_read_tokens"],
                cache_write_tokens=row["cache_write_tokens"], reasoning_tokens=row["reasoning_tokens"],
                flags=flags, dialect=dialect,
            )
            cost, version = price(usage, overrides)
            if cost is None:
                unknown += 1
                continue
            try:
                api_row = UsageRow(**json.loads(row["row_json"]))
            except Exception:
                unknown += 1  # a row whose JSON we cannot rebuild keeps its unknown cost
                continue
            new_json = dataclasses.replace(api_row, cost_usd=cost, price_version=version).to_json()
            new_flags = " ".join(sorted(flags_after_pricing(usage, cost, version)))
            updates.append((cost, version, new_flags, new_json, row["id"]))
            synced += row["synced_at"] is not None
        changed = store.set_prices(updates) if updates else 0
    return Repriced(changed, unknown, synced, version)
