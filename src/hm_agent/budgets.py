"""Local budgets: ``[[budgets]]`` in config.toml, spend per period, thresholds, blocks.

Spend is counted from the rows the writer commits (``hm_agent.rowfeed``
hands every new row to :class:`BudgetTracker` right after its transaction),
so streamed calls count as soon as their row exists. A row whose price is
unknown is never counted as $0: it is counted apart (``unpriced_calls``).

Each threshold fires once per budget and period: the firing is recorded in
the ``budget_alerts`` table before the alert is queued, so a restart never
fires it again (``hm_agent.alerts`` delivers it off the proxy thread). A
budget with ``action = "block"`` at 100% makes the addon answer new calls
in its scope with the provider's own error (``hm_agent.budgetguard``);
``halton-meter budget snooze NAME 1h`` lifts a block for a while.

Stdlib only: ``status`` and ``budget`` import this module.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

log = logging.getLogger("hm_agent.budgets")

PERIODS = ("day", "week", "month")
ACTIONS = ("notify", "block")
DEFAULT_THRESHOLDS = (50, 80, 100)
SCOPE_KEYS = ("provider", "model", "project", "tag")
MAX_BUDGETS = 100
MAX_WEBHOOKS = 10
MAX_LIMIT_USD = Decimal("1000000000")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class BudgetConfigError(ValueError):
    """A [[budgets]] or [alerts] entry cannot be used; the message says which and how to fix it."""


@dataclass(frozen=True, slots=True)
class Budget:
    name: str
    limit_usd: Decimal
    period: str = "month"
    scope: tuple[tuple[str, str], ...] = ()
    thresholds: tuple[int, ...] = DEFAULT_THRESHOLDS
    action: str = "notify"

    def scope_dict(self) -> dict[str, str]:
        return dict(self.scope)

    def describe_scope(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.scope) or "all LLM spend"


# -- config ---------------------------------------------------------------------


def parse_budgets(entries: Any, where: str) -> list[Budget]:
    """``[[budgets]]`` entries as Budgets; raises BudgetConfigError naming the entry."""
    if entries is None:
        return []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise BudgetConfigError(f"{where}: budgets must be written as [[budgets]] entries")
    if len(entries) > MAX_BUDGETS:
        raise BudgetConfigError(f"{where}: at most {MAX_BUDGETS} [[budgets]] entries, not {len(entries)}")
    out: list[Budget] = []
    seen: set[str] = set()
    for n, entry in enumerate(entries, 1):
        label = f"{where}: budgets entry {n}"
        budget = _parse_one(entry, label)
        if budget.name in seen:
            raise BudgetConfigError(f"{label}: the name {budget.name!r} is used twice; budget names must be unique")
        seen.add(budget.name)
        out.append(budget)
    return out


def _parse_one(entry: dict[str, Any], label: str) -> Budget:
    unknown = set(entry) - {"name", "scope", "period", "limit_usd", "thresholds", "action"}
    if unknown:
        raise BudgetConfigError(f"{label}: unknown key {sorted(unknown)[0]} (keys: name, scope, period, "
                                f"limit_usd, thresholds, action)")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise BudgetConfigError(f"{label}: needs name = \"...\" (1-64 letters, digits, '.', '_' or '-')")
    label = f"{label} ({name})"
    period = entry.get("period", "month")
    if period not in PERIODS:
        raise BudgetConfigError(f"{label}: period must be one of {', '.join(PERIODS)}, not {period!r}")
    action = entry.get("action", "notify")
    if action not in ACTIONS:
        raise BudgetConfigError(f"{label}: action must be notify or block, not {action!r}")
    limit = _parse_limit(entry.get("limit_usd"), label)
    thresholds = entry.get("thresholds", list(DEFAULT_THRESHOLDS))
    if (not isinstance(thresholds, list) or not thresholds or len(thresholds) > 20
            or not all(isinstance(t, int) and not isinstance(t, bool) and 1 <= t <= 1000 for t in thresholds)):
        raise BudgetConfigError(f"{label}: thresholds must be a list of 1-20 whole percentages "
                                f"between 1 and 1000, like [50, 80, 100]")
    scope = entry.get("scope", {})
    if not isinstance(scope, dict):
        raise BudgetConfigError(f"{label}: scope must be a table like {{ provider = \"openai\" }}")
    items: list[tuple[str, str]] = []
    for key, value in scope.items():
        if key not in SCOPE_KEYS:
            raise BudgetConfigError(f"{label}: scope.{key} is not a filter (filters: {', '.join(SCOPE_KEYS)})")
        if not isinstance(value, str) or not value or len(value) > 200:
            raise BudgetConfigError(f"{label}: scope.{key} must be a non-empty string (at most 200 characters)")
        items.append((key, value))
    return Budget(name=name, limit_usd=limit, period=period, scope=tuple(sorted(items)),
                  thresholds=tuple(sorted(set(thresholds))), action=action)


def _parse_limit(value: Any, label: str) -> Decimal:
    problem = f"{label}: limit_usd must be a positive amount of US dollars, like 25 or \"12.50\""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BudgetConfigError(problem)
    try:
        limit = Decimal(str(value).strip())
    except InvalidOperation:
        raise BudgetConfigError(problem) from None
    if not limit.is_finite() or limit <= 0 or limit > MAX_LIMIT_USD:
        raise BudgetConfigError(problem)
    return limit


def parse_webhooks(alerts: Any, where: str) -> list[str]:
    """``[[alerts.webhooks]] url = "https://..."`` as a list of URLs."""
    if alerts is None:
        return []
    hooks = alerts.get("webhooks", []) if isinstance(alerts, dict) else None
    if not isinstance(hooks, list) or not all(isinstance(h, dict) for h in hooks):
        raise BudgetConfigError(f"{where}: webhooks must be written as [[alerts.webhooks]] entries with url = \"...\"")
    if len(hooks) > MAX_WEBHOOKS:
        raise BudgetConfigError(f"{where}: at most {MAX_WEBHOOKS} [[alerts.webhooks]] entries")
    urls: list[str] = []
    for n, hook in enumerate(hooks, 1):
        url = hook.get("url")
        if not isinstance(url, str) or not re.fullmatch(r"https?://[^\s/]+\S*", url) or len(url) > 2000:
            raise BudgetConfigError(f"{where}: alerts.webhooks entry {n}: url must be an http(s) URL")
        unknown = set(hook) - {"url"}
        if unknown:
            raise BudgetConfigError(f"{where}: alerts.webhooks entry {n}: unknown key {sorted(unknown)[0]}")
        urls.append(url)
    return urls


# -- periods (the local calendar) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Period:
    key: str  # 2026-11-29 | 2026-W48 | 2026-11
    start: datetime  # aware, local
    end: datetime  # aware, local (exclusive)

    @property
    def start_ts(self) -> str:
        return _utc_ts(self.start)

    @property
    def end_ts(self) -> str:
        return _utc_ts(self.end)

    def utc_days(self) -> tuple[str, str]:
        """The UTC days the period touches (rows are indexed by UTC day)."""
        first = self.start.astimezone(UTC).date()
        last = (self.end - timedelta(microseconds=1)).astimezone(UTC).date()
        return first.isoformat(), last.isoformat()


def _utc_ts(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _local_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day).astimezone()


def period_at(kind: str, now: float) -> Period:
    """The day, ISO week (Monday first) or month containing ``now``, in local time."""
    today = datetime.fromtimestamp(now).date()
    if kind == "day":
        start, end = today, today + timedelta(days=1)
        key = today.isoformat()
    elif kind == "week":
        start = today - timedelta(days=today.weekday())
        end = start + timedelta(days=7)
        year, week, _ = today.isocalendar()
        key = f"{year}-W{week:02d}"
    else:
        start = today.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
        key = f"{today.year}-{today.month:02d}"
    return Period(key, _local_midnight(start), _local_midnight(end))


# -- scope -------------------------------------------------------------------------


def model_matches(wanted: str, model: str) -> bool:
    """``gpt-4o`` matches ``gpt-4o`` and its dated snapshots (``gpt-4o-2024-08-06``), not
    ``gpt-4o-mini``; a pattern with ``*`` is a glob."""
    wanted, model = wanted.lower(), model.lower()
    if "*" in wanted or "?" in wanted:
        return fnmatch.fnmatchcase(model, wanted)
    if model == wanted:
        return True
    rest = model[len(wanted):] if model.startswith(wanted + "-") else ""
    return bool(re.fullmatch(r"-(\d{4}-?\d{2}-?\d{2}|\d{4}|latest|preview(-\d{2}-\d{2})?)", rest))


def in_scope(scope: Sequence[tuple[str, str]], provider: str, model: str | None,
             project: str | None = None, tags: Iterable[str] = ()) -> bool:
    for key, value in scope:
        if key == "provider" and provider.lower() != value.lower():
            return False
        if key == "model" and (model is None or not model_matches(value, model)):
            return False
        if key == "project" and project != value:
            return False
        if key == "tag" and value not in tags:
            return False
    return True


def tag_terms(tags: Mapping[str, str] | None) -> tuple[str, ...]:
    """``{"team": "ml"}`` -> ``("team=ml", "team")``: what a ``tag`` scope is matched against."""
    if not tags:
        return ()
    return tuple(f"{k}={v}" for k, v in tags.items()) + tuple(tags)


def row_tags(row: Mapping[str, Any]) -> tuple[str, ...]:
    """Attribution tags of a stored row (``tags`` is a JSON object, or NULL)."""
    raw = row.get("tags")
    if not isinstance(raw, str) or not raw:
        return ()
    import json

    try:
        value = json.loads(raw)
    except ValueError:
        return ()
    return tag_terms({str(k): str(v) for k, v in value.items()}) if isinstance(value, dict) else ()


def row_in_scope(budget: Budget, row: Mapping[str, Any]) -> bool:
    project = row.get("project")
    return in_scope(budget.scope, str(row["provider"]), str(row["model"]),
                    project if isinstance(project, str) else None, row_tags(row))


# -- spend -----------------------------------------------------------------------------


@dataclass(slots=True)
class Spend:
    cost: Decimal = Decimal(0)
    priced_calls: int = 0
    unpriced_calls: int = 0

    def add(self, row: Mapping[str, Any]) -> None:
        cost = row["cost_usd"]
        if cost is not None:
            self.cost += Decimal(cost)
            self.priced_calls += 1
        elif 0 < int(row["status"]) < 400:
            # An error response is not billed; a successful call with no price is unknown, never $0.
            self.unpriced_calls += 1


def spend_for(store: Any, budget: Budget, period: Period, upto_rowid: int | None = None) -> Spend:
    """The budget's spend in ``period`` from the store (a tight loop: a month can be 10^5 rows)."""
    scope = dict(budget.scope)
    rows = store.budget_rows(*period.utc_days(), period.start_ts, period.end_ts, upto_rowid,
                             provider=scope.get("provider"), project=scope.get("project"))
    wanted_model, wanted_tag = scope.get("model"), scope.get("tag")
    models: dict[str, bool] = {}
    tag_sets: dict[str, bool] = {}
    costs: list[str] = []
    unpriced = 0
    for _provider, model, _project, tags, status, cost in rows:
        if wanted_model is not None:
            ok = models.get(model)
            if ok is None:
                ok = models[model] = model_matches(wanted_model, str(model))
            if not ok:
                continue
        if wanted_tag is not None:
            ok = tag_sets.get(tags)
            if ok is None:
                ok = tag_sets[tags] = wanted_tag in row_tags({"tags": tags})
            if not ok:
                continue
        if cost is not None:
            costs.append(cost)
        elif 0 < int(status) < 400:
            unpriced += 1  # an error is not billed; a successful call with no price is unknown, never $0
    return Spend(sum(map(Decimal, costs), Decimal(0)), len(costs), unpriced)


def percent(spend: Decimal, limit: Decimal) -> float:
    return float(spend * 100 / limit) if limit > 0 else 0.0


def money(value: Decimal) -> str:
    """$1,234.50; amounts under a cent keep 4 decimals ($0.0042)."""
    return f"${value:,.2f}" if value >= Decimal("0.01") or value == 0 else f"${value:,.4f}"


def parse_duration(text: str) -> float:
    """``30m``, ``1h``, ``2d`` -> seconds (at most 31 days); ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d{1,5})\s*([smhd])\s*", text)
    if not match:
        raise ValueError(f"a duration looks like 30m, 1h or 2d, not {text!r}")
    seconds = int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    if not 0 < seconds <= 31 * 86400:
        raise ValueError("a snooze lasts between 1 second and 31 days")
    return float(seconds)


# -- alerts and blocks --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Alert:
    budget: str
    period: str
    period_kind: str
    threshold: int
    spend_usd: str
    limit_usd: str
    percent: float
    action: str
    scope: dict[str, str]
    unpriced_calls: int
    fired_at: str

    def text(self) -> str:
        what = "reached" if self.threshold >= 100 else f"at {self.threshold}%"
        blocked = " New calls in its scope are now blocked." if self.action == "block" and self.threshold >= 100 else ""
        unpriced = f" ({self.unpriced_calls} call(s) with an unknown price not included)" if self.unpriced_calls else ""
        scope = ", ".join(f"{k}={v}" for k, v in self.scope.items()) or "all LLM spend"
        return (f"Halton Meter budget {self.budget} {what}: {money(Decimal(self.spend_usd))} of "
                f"{money(Decimal(self.limit_usd))} this {self.period_kind} ({self.period}, {scope}){unpriced}.{blocked}")


@dataclass(frozen=True, slots=True)
class BlockRule:
    """A block budget at 100%: calls in ``scope`` are refused until ``until`` (period end)."""

    budget: str
    scope: tuple[tuple[str, str], ...]
    until: float  # epoch: the period ends, the block lifts
    snoozed_until: float
    message: str

    def active(self, now: float) -> bool:
        return self.snoozed_until <= now < self.until


def block_message(budget: Budget, spend: Decimal, period: Period) -> str:
    return (f"Halton Meter budget \"{budget.name}\" is exhausted: {money(spend)} of "
            f"{money(budget.limit_usd)} this {budget.period} ({budget.describe_scope()}). "
            f"New calls in its scope are blocked until {period.end.strftime('%Y-%m-%d %H:%M %Z').strip()}. "
            f"To lift it: `halton-meter budget snooze {budget.name} 1h`, or raise limit_usd "
            f"in config.toml.")


@dataclass(slots=True)
class _State:
    budget: Budget
    period: Period | None = None
    spend: Spend = field(default_factory=Spend)
    fired: set[int] = field(default_factory=set)


class BudgetTracker:
    """Spend per budget for the current period; a RowFeed listener (runs on the writer
    thread, or a worker thread for the periodic poll; never on the proxy thread).

    ``blocks`` is a tuple swapped whole, read by the addon without a lock.
    """

    def __init__(self, budgets: Sequence[Budget], on_alert: Callable[[Alert], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._states = [_State(b) for b in budgets]
        self._dirty = True
        self.on_alert = on_alert
        self.clock = clock
        self.blocks: tuple[BlockRule, ...] = ()
        self.blocked_calls = 0

    def configure(self, budgets: Sequence[Budget]) -> None:
        """New [[budgets]] (config reload): recounted on the next poll."""
        with self._lock:
            old = {s.budget.name: s for s in self._states}
            states = []
            for b in budgets:
                prev = old.get(b.name)
                states.append(prev if prev is not None and prev.budget == b else _State(b))
            self._states = states
            self._dirty = True

    # RowFeed listener
    def on_rows(self, store: Any, rows: Sequence[Mapping[str, Any]], watermark: int) -> None:
        now = self.clock()
        fired: list[Alert] = []
        with self._lock:
            snoozes = store.budget_snoozes()
            for state in self._states:
                period = period_at(state.budget.period, now)
                if state.period is None or state.period.key != period.key or self._dirty:
                    state.period = period
                    state.spend = spend_for(store, state.budget, period, watermark)
                    state.fired = store.fired_thresholds(state.budget.name, period.key)
                else:
                    start, end = period.start_ts, period.end_ts
                    for row in rows:
                        if start <= row["ts"] < end and row_in_scope(state.budget, row):
                            state.spend.add(row)
                fired.extend(self._crossed(store, state, now))
            self._dirty = False
            self.blocks = tuple(self._block_rules(snoozes))
        for alert in fired:
            log.warning("budget alert: %s", alert.text())
            if self.on_alert is not None:
                try:
                    self.on_alert(alert)
                except Exception:
                    log.exception("could not queue the alert for %s", alert.budget)

    def _crossed(self, store: Any, state: _State, now: float) -> list[Alert]:
        budget, period = state.budget, state.period
        assert period is not None
        pct = percent(state.spend.cost, budget.limit_usd)
        out = []
        for threshold in budget.thresholds:
            if pct < threshold or threshold in state.fired:
                continue
            alert = Alert(
                budget=budget.name, period=period.key, period_kind=budget.period, threshold=threshold,
                spend_usd=format(state.spend.cost, "f"), limit_usd=format(budget.limit_usd, "f"),
                percent=round(pct, 2), action=budget.action, scope=budget.scope_dict(),
                unpriced_calls=state.spend.unpriced_calls,
                fired_at=datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            )
            # Recorded before it is sent: a restart never fires the same threshold again.
            if store.record_budget_alert(alert):
                out.append(alert)
            state.fired.add(threshold)
        return out

    def _block_rules(self, snoozes: Mapping[str, float]) -> Iterable[BlockRule]:
        for state in self._states:
            budget, period = state.budget, state.period
            if budget.action != "block" or period is None or state.spend.cost < budget.limit_usd:
                continue
            yield BlockRule(budget.name, budget.scope, period.end.timestamp(),
                            snoozes.get(budget.name, 0.0), block_message(budget, state.spend.cost, period))

    def blocking(self, provider: str, model: str | None,
                 attribution: Callable[[], tuple[str | None, tuple[str, ...]]] | None = None) -> BlockRule | None:
        """The block rule refusing this call, if any (proxy thread: no lock, no I/O).

        ``attribution()`` gives the call's ``(project, tag terms)``; it is asked only
        when an exhausted budget is scoped by project or tag.
        """
        blocks = self.blocks
        if not blocks:
            return None
        now = time.time()
        who: tuple[str | None, tuple[str, ...]] | None = None
        for rule in blocks:
            if not rule.active(now):
                continue
            if who is None and any(k in ("project", "tag") for k, _ in rule.scope):
                who = attribution() if attribution is not None else (None, ())
            project, tags = who or (None, ())
            if in_scope(rule.scope, provider, model, project, tags):
                self.blocked_calls += 1
                return rule
        return None

    def snapshot(self, snoozes: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
        with self._lock:
            now = self.clock()
            return [budget_view(s.budget, s.period, s.spend, s.fired, (snoozes or {}).get(s.budget.name, 0.0), now)
                    for s in self._states]


def budget_view(budget: Budget, period: Period | None, spend: Spend, fired: Iterable[int],
                snoozed_until: float, now: float) -> dict[str, Any]:
    """One budget as ``status --json``/``budget status --json`` show it (docs/budgets.md)."""
    exhausted = spend.cost >= budget.limit_usd
    snoozed = snoozed_until > now
    return {
        "name": budget.name,
        "scope": budget.scope_dict(),
        "period": budget.period,
        "period_key": period.key if period else None,
        "period_start": period.start.isoformat() if period else None,
        "period_end": period.end.isoformat() if period else None,
        "limit_usd": format(budget.limit_usd, "f"),
        "spend_usd": format(spend.cost, "f"),
        "percent": round(percent(spend.cost, budget.limit_usd), 2),
        "priced_calls": spend.priced_calls,
        "unpriced_calls": spend.unpriced_calls,
        "thresholds": list(budget.thresholds),
        "fired": sorted(fired),
        "action": budget.action,
        "blocking": budget.action == "block" and exhausted and not snoozed,
        "snoozed_until": datetime.fromtimestamp(snoozed_until, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        if snoozed else None,
    }


def offline_views(db: Path, budgets: Sequence[Budget], now: float | None = None,
                  count: bool = True) -> list[dict[str, Any]]:
    """The same views computed from db.sqlite alone (the daemon may be down).

    ``count=False`` (``status``, which must stay fast) leaves the spend out:
    ``spend_usd``, ``percent``, the call counts and ``blocking`` are null.
    """
    from .store import Store

    now = time.time() if now is None else now
    if not budgets:
        return []
    if not db.exists():
        return [budget_view(b, period_at(b.period, now), Spend(), (), 0.0, now) for b in budgets]
    with Store(db, readonly=True) as store:
        snoozes = store.budget_snoozes()
        out = []
        for b in budgets:
            period = period_at(b.period, now)
            fired = store.fired_thresholds(b.name, period.key)
            view = budget_view(b, period, spend_for(store, b, period) if count else Spend(), fired,
                               snoozes.get(b.name, 0.0), now)
            if not count:
                view.update(spend_usd=None, percent=None, priced_calls=None, unpriced_calls=None, blocking=None)
            out.append(view)
        return out
