"""Reconcile: compare local per-day totals with the cloud's and name the days to re-send.

The batch endpoint de-duplicates by row id, so re-sending a whole day the
cloud is short of is safe. A day where the cloud holds *more* rows than we do
(local rows pruned, or another copy of machine.json uploading) is reported,
never "fixed" by us.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from urllib.parse import urlencode

from ._dates import add_days, day_number, validate_date
from ._errors import LocalProtocolError, RemoteProtocolError
from ._http import Request, Response, TransportFailure, bearer
from ._outcomes import CallFailed, RetryLater, Unauthorised, classify_failure

TOTALS_PATH = "/v1/requests/totals"
DEFAULT_DAYS = 30
MAX_DAYS = 366

#: (row count, summed cost in USD as a decimal string or None when no row had a price)
DayTotal = tuple[int, str | None]


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    from_date: str
    to_date: str
    days_to_resend: tuple[str, ...]  # the cloud has fewer rows, or the same count at another cost
    matching_days: tuple[str, ...]
    cloud_extra_days: tuple[str, ...]  # the cloud has more rows than we do: reported only
    local_rows: int
    cloud_rows: int
    # The first day the workspace keeps (its retention, from the totals answer):
    # older days were deleted on purpose and are neither compared nor re-sent.
    retained_from: str | None = None

    @property
    def in_sync(self) -> bool:
        return not self.days_to_resend and not self.cloud_extra_days


ReconcileOutcome = ReconcileResult | Unauthorised | RetryLater | CallFailed


def _cost(value: str | None, what: str) -> Decimal:
    """None (no priced row) counts as zero so an all-unpriced day can still match."""
    if value is None:
        return Decimal(0)
    try:
        cost = Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise ValueError(f"{what}: cost_usd {value!r} is not a decimal") from None
    if not cost.is_finite():
        raise ValueError(f"{what}: cost_usd {value!r} is not a finite decimal")
    return cost


class Reconciler:
    """One reconcile over ``from_date``..``to_date`` (inclusive, UTC days)."""

    def __init__(self, from_date: str, to_date: str) -> None:
        validate_date(from_date, "from_date")
        validate_date(to_date, "to_date")
        span = day_number(to_date) - day_number(from_date) + 1
        if span < 1:
            raise LocalProtocolError(f"from_date {from_date} is after to_date {to_date}: swap them")
        if span > MAX_DAYS:
            raise LocalProtocolError(
                f"{span} days is too long a range to reconcile at once: use at most {MAX_DAYS}"
            )
        self.from_date = from_date
        self.to_date = to_date

    @classmethod
    def last_days(cls, today: str, days: int = DEFAULT_DAYS) -> Reconciler:
        """The ``days`` days ending with ``today`` (the driver's UTC date)."""
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            raise LocalProtocolError(f"days must be a positive whole number, got {days!r}")
        validate_date(today, "today")
        return cls(add_days(today, -(days - 1)), today)

    def covers(self, day: str) -> bool:
        return self.from_date <= day <= self.to_date  # ISO dates sort as strings

    def totals_request(self, token: str) -> Request:
        query = urlencode({"from_date": self.from_date, "to_date": self.to_date})
        return Request(
            "GET", f"{TOTALS_PATH}?{query}", (("Accept", "application/json"), bearer(token))
        )

    def receive_totals(
        self,
        answer: Response | TransportFailure,
        local_totals: Mapping[str, DayTotal],
    ) -> ReconcileOutcome:
        """Compare the cloud's answer with ``local_totals`` (day → (rows, cost_usd)).

        An error answer is an outcome like any call's (Unauthorised,
        RetryLater, CallFailed); a 200 whose body breaks the contract raises
        RemoteProtocolError.
        """
        if isinstance(answer, TransportFailure) or answer.status != 200:
            return classify_failure(answer)
        cloud, kept = self._parse_days(answer)
        local: dict[str, tuple[int, Decimal]] = {}
        for day, (rows, cost) in local_totals.items():
            if not self.covers(day) or (kept is not None and day < kept):
                continue
            try:
                local[day] = (rows, _cost(cost, f"local total of {day}"))
            except ValueError as exc:
                raise LocalProtocolError(str(exc)) from None
        resend: list[str] = []
        matching: list[str] = []
        extra: list[str] = []
        for day in sorted(set(local) | set(cloud)):
            local_rows, local_cost = local.get(day, (0, Decimal(0)))
            cloud_rows, cloud_cost = cloud.get(day, (0, Decimal(0)))
            if cloud_rows > local_rows:
                extra.append(day)
            elif cloud_rows < local_rows or cloud_cost != local_cost:
                resend.append(day)
            elif local_rows:
                matching.append(day)
        return ReconcileResult(
            from_date=self.from_date,
            to_date=self.to_date,
            days_to_resend=tuple(resend),
            matching_days=tuple(matching),
            cloud_extra_days=tuple(extra),
            local_rows=sum(rows for rows, _ in local.values()),
            cloud_rows=sum(rows for rows, _ in cloud.values()),
            retained_from=kept,
        )

    def _parse_days(self, answer: Response) -> tuple[dict[str, tuple[int, Decimal]], str | None]:
        data = answer.json()
        days = data.get("days") if isinstance(data, dict) else None
        if not isinstance(days, list):
            raise RemoteProtocolError("totals: the answer has no 'days' list")
        assert isinstance(data, dict)
        kept = data.get("retained_from")
        if kept is not None:
            if not isinstance(kept, str):
                raise RemoteProtocolError("totals: retained_from is not a date")
            try:
                validate_date(kept)
            except LocalProtocolError:
                raise RemoteProtocolError(f"totals: retained_from {kept!r} is not a YYYY-MM-DD date") from None
        cloud: dict[str, tuple[int, Decimal]] = {}
        for entry in days:
            if not isinstance(entry, dict):
                raise RemoteProtocolError("totals: a 'days' entry is not an object")
            day, rows, cost = entry.get("date"), entry.get("rows"), entry.get("cost_usd")
            if not isinstance(day, str):
                raise RemoteProtocolError(f"totals: {day!r} is not a date")
            try:
                validate_date(day)
            except LocalProtocolError:
                raise RemoteProtocolError(f"totals: {day!r} is not a YYYY-MM-DD date") from None
            if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
                raise RemoteProtocolError(f"totals: rows of {day} is {rows!r}, not a count")
            if cost is not None and not isinstance(cost, str):
                raise RemoteProtocolError(f"totals: cost_usd of {day} is not a decimal string")
            if day in cloud:
                raise RemoteProtocolError(f"totals: {day} appears twice")
            if not self.covers(day) or (kept is not None and day < kept):
                continue  # not what we asked for, or deleted by the workspace's retention
            try:
                cloud[day] = (rows, _cost(cost, f"totals of {day}"))
            except ValueError as exc:
                raise RemoteProtocolError(str(exc)) from None
        return cloud, kept
