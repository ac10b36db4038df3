"""Cloud request bodies: refused unless the workspace accepts them, idempotent by row id, only for
rows the machine synced, encrypted under a per-workspace key wrapped by the master key (rotation),
and the schema 4 upgrade."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Engine, inspect, select

from hm_cloud import request_bodies as rb
from hm_cloud.db import SCHEMA_VERSION, init_schema, make_engine, schema_version, workspace_keys
from hm_proto.server import ApiError
from tests.test_cloud_retention import NOW, seed, workspace


@pytest.fixture
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    monkeypatch.setenv(rb.MASTER_ENV, Fernet.generate_key().decode())
    eng = make_engine(f"sqlite:///{tmp_path / 'cloud.sqlite'}")
    init_schema(eng)
    yield eng
    eng.dispose()


def body(rid: str, text: str = "prompt") -> dict[str, object]:
    return {"id": rid, "request": text, "response": "answer", "truncated": False}


def test_bodies_are_refused_until_accepted_then_stored_once(engine: Engine) -> None:
    acme = workspace(engine, "acme")
    [rid] = seed(engine, acme, "2026-11-29", 1)
    with pytest.raises(ApiError) as refused:
        rb.store_bodies(engine, acme, "m1", [body(rid)], NOW)
    assert refused.value.status == 403 and refused.value.error == "bodies_not_accepted"
    rb.set_accept(engine, acme, True, "acme@example.com", None, NOW)
    stranger = str(uuid.uuid4())
    assert rb.store_bodies(engine, acme, "m1", [body(rid), body(stranger)], NOW) == {
        "stored": 1, "duplicates": 0, "unknown": [stranger]}
    assert rb.store_bodies(engine, acme, "m1", [body(rid, "again")], NOW)["duplicates"] == 1  # idempotent
    assert rb.store_bodies(engine, acme, "other-machine", [body(rid)], NOW)["unknown"] == [rid]
    got = rb.read_body(engine, acme, rid, "acme@example.com", "127.0.0.1", NOW)
    assert got is not None and got["body"] == {"request": "prompt", "response": "answer", "truncated": False}
    assert rb.count_bodies(engine, acme) == 1
    rb.set_accept(engine, acme, False, "acme@example.com", None, NOW)
    assert rb.delete_bodies(engine, acme, "acme@example.com", None, NOW) == 1


def test_master_key_rotation_rewraps_workspace_keys(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    acme = workspace(engine, "acme")
    [rid] = seed(engine, acme, "2026-11-29", 1)
    rb.set_accept(engine, acme, True, "acme@example.com", None, NOW)
    rb.store_bodies(engine, acme, "m1", [body(rid)], NOW)
    old = os.environ[rb.MASTER_ENV]
    new = Fernet.generate_key().decode()
    monkeypatch.setenv(rb.MASTER_ENV, f"{new},{old}")
    assert rb.rewrap_keys(engine) == 1
    monkeypatch.setenv(rb.MASTER_ENV, new)  # the old key retired
    got = rb.read_body(engine, acme, rid, "a", None, NOW)
    assert got is not None and got["body"]["request"] == "prompt"
    with engine.connect() as conn:
        wrapped = conn.execute(select(workspace_keys.c.wrapped_key)).scalar()
    assert wrapped and Fernet(new.encode()).decrypt(wrapped.encode())
    monkeypatch.delenv(rb.MASTER_ENV)
    assert rb.master_key_problem() is not None and "HALTON_METER_CLOUD_MASTER_KEY" in rb.master_key_problem()


def test_uploads_are_bounded(engine: Engine) -> None:
    with pytest.raises(ApiError, match="At most 16"):
        rb.parse_upload(b'{"bodies": [' + b",".join([b'{}'] * 17) + b"]}")
    for bad in (b'{"bodies": [{"id": "x", "request": "", "response": "", "truncated": false}]}',
                b'{"bodies": [{"id": "' + str(uuid.uuid4()).encode() + b'", "request": 1, "response": "",'
                b' "truncated": false}]}'):
        with pytest.raises(ApiError) as err:
            rb.parse_upload(bad)
        assert err.value.status == 400


def test_a_version_3_database_gains_accept_bodies(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'old.sqlite'}")
    init_schema(eng)
    acme = workspace(eng, "acme")
    with eng.begin() as conn:  # as retention's first release left it: no accept_bodies, version 3
        conn.exec_driver_sql("ALTER TABLE workspace_settings DROP COLUMN accept_bodies")
        conn.exec_driver_sql(f"INSERT INTO workspace_settings (workspace_id, retention_days, updated_at)"
                             f" VALUES ('{acme}', 30, 1.0)")
        conn.execute(schema_version.update().values(version=3))
    init_schema(eng)
    assert "accept_bodies" in {c["name"] for c in inspect(eng).get_columns("workspace_settings")}
    with eng.connect() as conn:
        assert conn.execute(select(schema_version.c.version)).scalar() == SCHEMA_VERSION
    assert not rb.accepts(eng, acme)
    eng.dispose()


def test_the_workspace_retention_deletes_bodies_with_their_rows(engine: Engine) -> None:
    from datetime import date

    from hm_cloud import retention

    acme = workspace(engine, "acme")
    [old] = seed(engine, acme, "2026-09-01", 1)
    [new] = seed(engine, acme, "2026-11-29", 1)
    rb.set_accept(engine, acme, True, "acme@example.com", None, NOW)
    rb.store_bodies(engine, acme, "m1", [body(old), body(new)], NOW)
    retention.set_retention(engine, acme, 30, "acme@example.com", None, NOW)
    assert retention.run_pass(engine, date(2026, 11, 29), NOW).deleted == {acme: 1}
    assert rb.count_bodies(engine, acme) == 1 and rb.read_body(engine, acme, old, "a", None, NOW) is None


def test_one_row_id_twice_in_an_upload_or_in_two_at_once_is_a_duplicate_not_a_500(engine: Engine) -> None:
    # Both copies passed the "already stored?" check and the second INSERT hit the primary key:
    # IntegrityError, a 500 (and the same for two uploads of one row at the same moment).
    import threading

    acme = workspace(engine, "acme")
    rb.set_accept(engine, acme, True, "acme@example.com", None, NOW)
    [rid, other] = seed(engine, acme, "2026-11-29", 2)
    assert rb.store_bodies(engine, acme, "m1", [body(rid, "first"), body(rid, "second")], NOW) == {
        "stored": 1, "duplicates": 1, "unknown": []}
    got = rb.read_body(engine, acme, rid, "a", None, NOW)
    assert got is not None and got["body"]["request"] == "first"
    results: list[object] = []
    start = threading.Barrier(8)

    def upload() -> None:
        start.wait()
        try:
            results.append(rb.store_bodies(engine, acme, "m1", [body(other)], NOW)["stored"])
        except Exception as exc:  # the test reports it below
            results.append(exc)

    threads = [threading.Thread(target=upload) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(map(str, results)) == ["0"] * 7 + ["1"], results
