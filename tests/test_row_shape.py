"""The usage row is defined once, by hm_proto.UsageRow (api.md's Row); every other
shape of it (capture's Tokens and CapturedUsage, the daemon's StoredRow, the
backend's usage_rows table) is checked against it here, so adding a field in one
place and forgetting another fails a test instead of losing the field in transit."""

from __future__ import annotations

from dataclasses import fields

from hm_agent.capture.tap import CapturedUsage
from hm_agent.capture.usage import Tokens
from hm_agent.store import StoredRow
from hm_cloud.db import usage_rows
from hm_proto import UsageRow
from hm_proto.server import TOKEN_FIELDS

ROW = [f.name for f in fields(UsageRow)]


def test_every_row_field_is_stored_locally_and_in_the_cloud() -> None:
    stored = {f.name for f in fields(StoredRow)}
    assert set(ROW) <= stored, sorted(set(ROW) - stored)
    columns = set(usage_rows.c.keys())
    assert set(ROW) <= columns, sorted(set(ROW) - columns)


def test_capture_carries_every_token_field_of_the_row() -> None:
    assert set(TOKEN_FIELDS) == {name for name in ROW if name.endswith("_tokens")}
    for shape in (Tokens, CapturedUsage):
        names = {f.name for f in fields(shape)}
        assert set(TOKEN_FIELDS) <= names, (shape.__name__, sorted(set(TOKEN_FIELDS) - names))
    captured = {f.name for f in fields(CapturedUsage)}
    assert {"provider", "model", "endpoint", "status", "stream"} <= captured
