"""`report --format focus`: the local spend as a FOCUS 1.2 cost and usage CSV.

One line per UTC day, provider, model and project (the FinOps Open Cost and
Usage Specification's charge period is the UTC day). Costs are the exact
decimal sums the report shows; the total of ``BilledCost`` equals the
report's ``cost_usd`` over the same range. Calls whose price is unknown get
their own line with empty cost columns and ``x_CostUnknown=true``: never $0
(a deliberate deviation from FOCUS, whose cost columns are never null).
The columns and values are hm_charts.focus', shared with the backend's
``GET /v1/usage?format=focus``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from hm_charts.focus import COLUMNS, TOKENS, focus_line

from ._ui import csv_cell


@dataclass
class _Line:
    cost: Decimal = Decimal(0)
    calls: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: {c: 0 for c, _ in TOKENS})


def focus_lines(rows: Any, machine: str | None, keys: Any = None,
                where: list[tuple[str, str | None]] | None = None) -> list[dict[str, object]]:
    groups: dict[tuple[str, str, str, str | None, bool], _Line] = {}
    for row in rows:
        if where and keys is not None and any(keys.get(row, dim) != value for dim, value in where):
            continue
        unknown = row["cost_usd"] is None
        key = (row["day"], row["provider"], row["model"], row["project"], unknown)
        line = groups.setdefault(key, _Line())
        line.calls += 1
        if not unknown:
            line.cost += Decimal(row["cost_usd"])
        for column, _ in TOKENS:
            if row[column] is not None:
                line.tokens[column] += int(row[column])
    out = []
    for (day_text, provider, model, project, unknown), line in sorted(
            groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3] or "", kv[0][4])):
        cost = None if unknown else format(line.cost, "f")
        out.append(focus_line(day_text, provider, model, project, machine, cost, line.calls, line.tokens))
    return out


def focus_csv(home: Any, from_day: str, to_day: str, where: list[tuple[str, str | None]]) -> str:
    from hm_agent.home import HomeError, paths, read_machine_id

    from .report import _Keys, read_rows

    try:
        machine = read_machine_id(paths(home))
    except HomeError:
        machine = None
    lines = focus_lines(read_rows(home, from_day, to_day), machine, _Keys(), where)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for line in lines:  # outside strings (models, providers, projects) without control characters
        writer.writerow({k: csv_cell(v) for k, v in line.items()})
    return buf.getvalue()
