"""Calendar dates as ``YYYY-MM-DD`` strings, without ``datetime``.

hm_proto may not read a clock, so "the last 30 days" is computed from a
``today`` string the driver passes in. Dates map to day numbers in the
proleptic Gregorian calendar (day 0 = 1970-01-01) with Howard Hinnant's
``days_from_civil`` algorithm, which is exact for every year 1..9999.
"""

from __future__ import annotations

import re

from ._errors import LocalProtocolError

_DATE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})", re.ASCII)
_MIN_DAY = -719162  # 0001-01-01
_MAX_DAY = 2932896  # 9999-12-31


def is_leap_year(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def days_in_month(year: int, month: int) -> int:
    if month == 2:
        return 29 if is_leap_year(year) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def parse_date(text: str) -> tuple[int, int, int]:
    """``(year, month, day)`` of a ``YYYY-MM-DD`` string; ValueError if it is not a real date."""
    match = _DATE_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not a date in YYYY-MM-DD form: {text!r}")
    year, month, day = (int(part) for part in match.groups())
    if year < 1 or not 1 <= month <= 12 or not 1 <= day <= days_in_month(year, month):
        raise ValueError(f"no such calendar date: {text!r}")
    return year, month, day


def is_valid_date(text: str) -> bool:
    try:
        parse_date(text)
    except ValueError:
        return False
    return True


def validate_date(text: str, what: str = "date") -> str:
    """Return ``text`` if it is a real ``YYYY-MM-DD`` date, else LocalProtocolError."""
    try:
        parse_date(text)
    except ValueError as exc:
        raise LocalProtocolError(f"{what}: {exc}; pass a date like 2026-11-24") from None
    return text


def day_number(text: str) -> int:
    """Days since 1970-01-01 (negative before it)."""
    year, month, day = parse_date(text)
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def date_from_day_number(number: int) -> str:
    """Inverse of :func:`day_number`."""
    if not _MIN_DAY <= number <= _MAX_DAY:
        raise ValueError(f"day number {number} is outside years 1..9999")
    z = number + 719468
    era = z // 146097
    day_of_era = z - era * 146097
    year_of_era = (
        day_of_era - day_of_era // 1460 + day_of_era // 36524 - day_of_era // 146096
    ) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    mp = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * mp + 2) // 5 + 1
    month = mp + (3 if mp < 10 else -9)
    year = year_of_era + era * 400 + (month <= 2)
    return f"{year:04d}-{month:02d}-{day:02d}"


def add_days(text: str, days: int) -> str:
    return date_from_day_number(day_number(text) + days)


def days_between(start: str, end: str) -> int:
    """``end - start`` in days (negative when ``end`` is earlier)."""
    return day_number(end) - day_number(start)


def date_range(start: str, end: str) -> list[str]:
    """Every date from ``start`` to ``end``, both included (empty if end < start)."""
    first = day_number(start)
    return [date_from_day_number(n) for n in range(first, day_number(end) + 1)]
