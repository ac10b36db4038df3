"""Budgets without processes: config, periods, scope, exactly-once thresholds on a real store."""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from hm_agent.budgetguard import error_body
from hm_agent.budgets import (
    Alert,
    Budget,
    BudgetTracker,
    model_matches,
    offline_views,
    parse_budgets,
    parse_duration,
    parse_webhooks,
    period_at,
)
from hm_agent.config import ConfigError, parse_config
from hm_agent.rowfeed import RowFeed
from hm_agent.store import Store, StoredRow


@pytest.fixture
def paris() -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Paris"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def local_epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()  # naive = local time


def row(ts: str, cost: str | None = "1", model: str = "gpt-4o-2024-08-06", provider: str = "openai",
        status: int = 200) -> StoredRow:
    return StoredRow(
        id=str(uuid.uuid4()), ts=ts, provider=provider, model=model, host="api.openai.com",
        endpoint="/v1/chat/completions", status=status, stream=True, input_tokens=1, output_tokens=1,
        cache_read_tokens=None, cache_write_tokens=None, reasoning_tokens=None, cost_usd=cost,
        price_version="test", latency_ms=5, ttfb_ms=1, flags="", row_json=b"{}",
    )


# -- config ---------------------------------------------------------------------------

def test_config_budgets_and_webhooks_parse_with_defaults(tmp_path: Path) -> None:
    cfg = parse_config(
        '[[budgets]]\nname = "team"\nlimit_usd = 25\nscope = { provider = "openai", model = "gpt-4o" }\n'
        '[[budgets]]\nname = "daily.cap"\nperiod = "day"\nlimit_usd = "2.50"\nthresholds = [100, 90]\n'
        'action = "block"\n[[alerts.webhooks]]\nurl = "https://hooks.slack.com/services/T/B/x"\n',
        tmp_path / "config.toml")
    team, cap = cfg.budgets
    assert team == Budget("team", Decimal(25), "month", (("model", "gpt-4o"), ("provider", "openai")),
                          (50, 80, 100), "notify")
    assert cap.limit_usd == Decimal("2.50") and cap.thresholds == (90, 100) and cap.action == "block"
    assert cfg.alert_webhooks == ["https://hooks.slack.com/services/T/B/x"]
    assert cfg.warnings == []


@pytest.mark.parametrize(("text", "message"), [
    ('[[budgets]]\nlimit_usd = 5\n', "needs name"),
    ('[[budgets]]\nname = "a b"\nlimit_usd = 5\n', "needs name"),
    ('[[budgets]]\nname = "x"\nlimit_usd = 0\n', "limit_usd must be a positive amount"),
    ('[[budgets]]\nname = "x"\nlimit_usd = "lots"\n', "limit_usd must be a positive amount"),
    ('[[budgets]]\nname = "x"\nlimit_usd = 1e99\n', "limit_usd must be a positive amount"),
    ('[[budgets]]\nname = "x"\nlimit_usd = 5\nperiod = "year"\n', "period must be one of day, week, month"),
    ('[[budgets]]\nname = "x"\nlimit_usd = 5\naction = "kill"\n', "action must be notify or block"),
    ('[[budgets]]\nname = "x"\nlimit_usd = 5\nthresholds = [0]\n', "thresholds must be"),
    ('[[budgets]]\nname = "x"\nlimit_usd = 5\nscope = { user = "me" }\n', "scope.user is not a filter"),
    ('[[budgets]]\nname = "x"\nlimit_usd = 5\nlimt = 3\n', "unknown key limt"),
    ('[[budgets]]\nname = "x"\nlimit_usd = 5\n[[budgets]]\nname = "x"\nlimit_usd = 6\n', "used twice"),
    ('budgets = 3\n', "[[budgets]] entries"),
    ('[[alerts.webhooks]]\nurl = "ftp://x"\n', "http(s) URL"),
])
def test_bad_budget_config_is_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, tmp_path / "config.toml")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(tmp_path / "config.toml") in str(err.value)


def test_limits_on_counts() -> None:
    with pytest.raises(ValueError, match="at most 100"):
        parse_budgets([{"name": f"b{i}", "limit_usd": 1} for i in range(101)], "here")
    with pytest.raises(ValueError, match="at most 10"):
        parse_webhooks({"webhooks": [{"url": "http://x"}] * 11}, "here")
    assert parse_duration("1h") == 3600 and parse_duration(" 30m ") == 1800
    for bad in ("1y", "0h", "99999d", "-1h", ""):
        with pytest.raises(ValueError):
            parse_duration(bad)


# -- periods and scope ----------------------------------------------------------------

def test_periods_follow_the_local_calendar(paris: None) -> None:
    now = local_epoch("2026-11-29T00:30:00")  # Sunday; 2026-11-28T23:30Z in UTC
    day = period_at("day", now)
    assert day.key == "2026-11-29" and day.start_ts == "2026-11-28T23:00:00.000Z"
    assert day.end_ts == "2026-11-29T23:00:00.000Z" and day.utc_days() == ("2026-11-28", "2026-11-29")
    week = period_at("week", now)
    assert week.key == "2026-W48" and week.start.date().isoformat() == "2026-11-23"
    month = period_at("month", now)
    assert month.key == "2026-11" and month.end.date().isoformat() == "2026-12-01"
    assert period_at("month", local_epoch("2026-12-31T23:59:00")).end.date().isoformat() == "2027-01-01"
    # The day the clocks go back is 25 hours long.
    dst = period_at("day", local_epoch("2026-10-25T12:00:00"))
    assert dst.end.timestamp() - dst.start.timestamp() == 25 * 3600


@pytest.mark.parametrize(("wanted", "model", "ok"), [
    ("gpt-4o", "gpt-4o", True),
    ("gpt-4o", "gpt-4o-2024-08-06", True),
    ("gpt-4o", "gpt-4o-mini", False),
    ("gpt-4o", "gpt-4o-mini-2024-07-18", False),
    ("claude-sonnet-4-5", "claude-sonnet-4-5-20250929", True),
    ("claude-*", "claude-opus-4-1-20250805", True),
    ("GPT-4o", "gpt-4o", True),
    ("gemini-2.5-flash", "gemini-2.5-flash-lite", False),
])
def test_model_scope(wanted: str, model: str, ok: bool) -> None:
    assert model_matches(wanted, model) is ok


def test_project_and_tag_scope_read_the_attribution_columns() -> None:
    from hm_agent.budgets import row_in_scope

    budget = Budget("acme", Decimal(1), scope=(("project", "acme"), ("tag", "team=ml")))
    base = {"provider": "openai", "model": "gpt-4o", "project": "acme", "tags": '{"team": "ml", "env": "ci"}'}
    assert row_in_scope(budget, base)
    assert not row_in_scope(budget, base | {"project": "other"})
    assert not row_in_scope(budget, base | {"tags": '{"team": "web"}'})
    assert not row_in_scope(budget, base | {"tags": None})
    assert not row_in_scope(budget, base | {"tags": "not json"})
    assert row_in_scope(Budget("t", Decimal(1), scope=(("tag", "env"),)), base)  # a bare key: any value


def test_error_bodies_are_each_providers_shape() -> None:
    import json

    assert json.loads(error_body("openai", "m")) == {"error": {"message": "m", "type": "budget_exceeded",
                                                               "param": None, "code": "budget_exceeded"}}
    assert json.loads(error_body("anthropic", "m")) == {"type": "error", "error": {"type": "budget_exceeded",
                                                                                   "message": "m"}}
    gemini = json.loads(error_body("gemini", "m"))["error"]
    assert gemini["code"] == 429 and gemini["status"] == "RESOURCE_EXHAUSTED" and gemini["message"] == "m"


# -- the tracker on a real store ------------------------------------------------------------

class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def test_each_threshold_fires_once_per_period_across_restarts(tmp_path: Path, paris: None) -> None:
    db = tmp_path / "db.sqlite"
    budget = Budget("daily", Decimal(10), "day", (("provider", "openai"),), (50, 80, 100), "block")
    clock = Clock(local_epoch("2026-11-29T10:00:00"))
    fired: list[Alert] = []
    with Store(db) as store:
        # Yesterday's spend does not count; another provider does not count; an error does not count.
        store.insert_rows([row(utc(clock.now - 86400), "9"), row(utc(clock.now), "9", provider="anthropic"),
                           row(utc(clock.now), None, status=429)])
        feed = RowFeed(db)
        tracker = BudgetTracker([budget], on_alert=fired.append, clock=clock)
        feed.listeners.append(tracker)
        feed.poll()
        assert fired == [] and tracker.snapshot()[0]["spend_usd"] == "0"
        store.insert_rows([row(utc(clock.now), "4.9"), row(utc(clock.now), None)])  # unknown price: apart
        feed.poll()
        view = tracker.snapshot()[0]
        assert fired == [] and view["spend_usd"] == "4.9" and view["unpriced_calls"] == 1
        store.insert_rows([row(utc(clock.now), "0.1")])
        feed.poll()
        feed.poll()
        assert [a.threshold for a in fired] == [50]
        store.insert_rows([row(utc(clock.now), "6")])  # 50% -> 110%: 80 and 100 both fire, once each
        feed.poll()
        assert [a.threshold for a in fired] == [50, 80, 100]
        assert fired[-1].spend_usd == "11.0" and fired[-1].unpriced_calls == 1
        assert tracker.blocking("openai", "gpt-4o") is not None
        assert tracker.blocking("anthropic", "claude") is None
        feed.close()

        # A restart recounts from the store and fires nothing again.
        again: list[Alert] = []
        feed = RowFeed(db)
        tracker = BudgetTracker([budget], on_alert=again.append, clock=clock)
        feed.listeners.append(tracker)
        feed.poll()
        assert again == [] and tracker.snapshot()[0]["spend_usd"] == "11.0"
        assert tracker.blocks and "halton-meter budget snooze daily 1h" in tracker.blocks[0].message

        # A snooze lifts the block; the next day starts from zero and the block is gone.
        store.set_budget_snooze("daily", time.time() + 3600)
        feed.poll()
        assert tracker.blocking("openai", "gpt-4o") is None
        store.set_budget_snooze("daily", None)
        feed.poll()
        assert tracker.blocking("openai", "gpt-4o") is not None
        clock.now += 86400
        feed.poll()
        assert tracker.snapshot()[0]["spend_usd"] == "0" and tracker.blocks == ()
        store.insert_rows([row(utc(clock.now), "5")])
        feed.poll()
        assert [a.threshold for a in again] == [50] and again[0].period == "2026-11-30"
        feed.close()


def test_a_store_made_before_budgets_gets_the_tables_and_offline_views_read_it(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    with Store(db) as store:
        store.insert_rows([row(utc(time.time()), "3")])
    conn = sqlite3.connect(db)
    conn.executescript("DROP TABLE budget_alerts; DROP TABLE budget_snoozes;")  # the previous schema
    conn.close()
    budget = Budget("all", Decimal(4), "day")
    # Read-only (status, budget status with the daemon down): the missing tables read as empty.
    assert offline_views(db, [budget])[0]["spend_usd"] == "3"
    with Store(db) as store:  # the daemon opening it upgrades it in place
        assert store.fired_thresholds("all", "x") == set() and store.budget_snoozes() == {}
        store.set_budget_snooze("all", 1.0)
        assert store.budget_snoozes() == {"all": 1.0}
    assert offline_views(tmp_path / "absent.sqlite", [budget])[0]["spend_usd"] == "0"


def test_status_with_the_daemon_down_lists_budgets_without_counting(tmp_path: Path) -> None:
    import json

    from .support.daemon import daemon_env, run_cli

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "config.toml").write_text('[[budgets]]\nname = "monthly"\nlimit_usd = 5\n')
    with Store(home / "db.sqlite") as store:
        store.insert_rows([row(utc(time.time()), "9")])
    st = json.loads(run_cli(home, "status", "--json", env=daemon_env(home)).stdout)
    assert st["budgets"][0]["name"] == "monthly" and st["budgets"][0]["spend_usd"] is None
    assert "monthly $5.00 a month (spend: halton-meter budget status)" in run_cli(
        home, "status", env=daemon_env(home)).stdout
    counted = json.loads(run_cli(home, "budget", "status", "--json", env=daemon_env(home)).stdout)
    assert counted["source"] == "database" and counted["budgets"][0]["spend_usd"] == "9"


def test_the_feed_keeps_counting_after_retention_emptied_the_table(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    seen: list[str] = []

    class Listener:
        def on_rows(self, store: Store, rows: list[dict[str, object]], watermark: int) -> None:
            seen.extend(str(r["id"]) for r in rows)

    with Store(db) as store:
        first = [row(utc(time.time())) for _ in range(5)]
        store.insert_rows(first)
        feed = RowFeed(db)
        feed.listeners.append(Listener())
        store.insert_rows([row(utc(time.time())) for _ in range(3)])
        feed.poll()
        assert len(seen) == 3
        with sqlite3.connect(db) as conn:
            conn.execute("DELETE FROM requests")  # what retention does to an idle machine's old days
        again = [row(utc(time.time())) for _ in range(2)]
        store.insert_rows(again)
        feed.poll()
        assert seen[3:] == [r.id for r in again]
        feed.close()


def test_budget_list_json_and_a_bad_config_in_one_line(tmp_path: Path) -> None:
    import json

    from .support.daemon import daemon_env, run_cli

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "config.toml").write_text('[[budgets]]\nname = "gpt4o"\nlimit_usd = "2.5"\nscope = { model = "gpt-4o" }\n'
                                      'action = "block"\nthresholds = [90]\n')
    listed = json.loads(run_cli(home, "budget", "list", "--json", env=daemon_env(home)).stdout)
    assert listed == {"budgets": [{"name": "gpt4o", "scope": {"model": "gpt-4o"}, "period": "month",
                                   "limit_usd": "2.5", "thresholds": [90], "action": "block"}]}
    (home / "config.toml").write_text('[[budgets]]\nname = "gpt4o"\nlimit_usd = -1\n')
    bad = run_cli(home, "budget", "list", env=daemon_env(home))
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "limit_usd must be a positive amount" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    snooze = run_cli(home, "budget", "snooze", "gpt4o", "1h", env=daemon_env(home))
    assert snooze.returncode == 1 and "limit_usd" in snooze.stderr
