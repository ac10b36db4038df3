"""Body sync: uploads the encrypted-at-rest bodies (``[capture] bodies = "sync"``) after their rows.

Runs only while cloud sync is on and the machine's mode is "sync"; uploads only
when the workspace accepts bodies (``accept_bodies`` in ``GET /v1/whoami``, asked
at start and every ``WHOAMI_SECONDS``). A body goes only after its row was
acknowledged, in its own requests (``POST /v1/requests/bodies``, at most 16 a
time), so a body failure never holds up row sync. ``cloud disconnect`` turns
sync off, which stops this component: pending bodies are never uploaded then.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("hm_agent.bodysync")

PER_UPLOAD = 16
UPLOAD_BYTES = 3 * 1024 * 1024  # JSON of one upload; the backend refuses more than 4 MiB
WHOAMI_SECONDS = 300.0
INTERVAL_ENV = "HALTON_METER_BODY_SYNC_SECONDS"


# What the running component last heard (cloud status shows it).
STATE: dict[str, bool | None] = {"accepted": None}


def _interval() -> float:
    try:
        return min(max(float(os.environ.get(INTERVAL_ENV, "5")), 0.1), 60.0)
    except ValueError:
        return 5.0


class BodySync:
    name = "bodysync"

    def __init__(self) -> None:
        self.accepted: bool | None = None  # the workspace's answer, once asked
        self.uploaded = 0
        self.last_error: str | None = None

    def should_run(self, config: Any, home: Any) -> bool:
        bodies = getattr(config, "bodies", None)
        return bool(getattr(config, "cloud_enabled", False)) and bodies is not None and bodies.mode == "sync"

    def health(self) -> dict[str, Any]:
        return {"workspace_accepts_bodies": self.accepted, "uploaded": self.uploaded, "last_error": self.last_error}

    async def run(self, ctx: Any) -> None:
        import anyio

        from hm_proto import Request, WhoAmI, parse_whoami, whoami_request

        from . import bodies
        from .cloudlink import load_credentials
        from .cloudservice import cloud_client
        from .store import Store

        store = Store(ctx.home.db)
        asked_at = 0.0
        try:
            while True:
                try:
                    creds = await anyio.to_thread.run_sync(load_credentials, ctx.home, store)
                    base_url = creds.base_url or ctx.config.cloud_base_url
                    async with cloud_client(ctx.config, base_url) as client:
                        if time.monotonic() - asked_at > WHOAMI_SECONDS or not self.accepted:
                            who = parse_whoami(await client.send(whoami_request(creds.token)))
                            if isinstance(who, WhoAmI):
                                self.accepted, asked_at = who.accept_bodies, time.monotonic()
                                STATE["accepted"] = self.accepted
                        while self.accepted:
                            pending = await anyio.to_thread.run_sync(store.pending_bodies, PER_UPLOAD)
                            if not pending:
                                break
                            key = bodies.load_or_create_key(ctx.home.home)
                            items = pack([(row_id, bodies.decrypt(key, token)) for row_id, token in pending])
                            answer = await client.send(Request(
                                "POST", "/v1/requests/bodies",
                                (("Content-Type", "application/json"), ("Accept", "application/json"),
                                 ("Authorization", f"Bearer {creds.token}")),
                                json.dumps({"bodies": items}, ensure_ascii=False).encode()))
                            status = getattr(answer, "status", None)
                            if status == 403:
                                self.accepted = STATE["accepted"] = False  # the workspace stopped accepting
                                break
                            if status != 200:
                                self.last_error = f"body upload answered {status or answer}"
                                break
                            at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
                            await anyio.to_thread.run_sync(store.mark_bodies_synced, [i["id"] for i in items], at)
                            self.uploaded += len(items)
                            self.last_error = None
                except Exception as exc:  # the next round tries again; row sync is not involved
                    self.last_error = str(exc)[:300]
                    log.warning("body upload failed: %s", exc)
                await anyio.sleep(_interval())
        finally:
            store.close()


def _size(item: dict[str, Any]) -> int:
    return len(json.dumps(item, ensure_ascii=False).encode())


def pack(docs: list[tuple[str, dict[str, Any]]], budget: int = UPLOAD_BYTES) -> list[dict[str, Any]]:
    """The first bodies of ``docs`` that fit in one upload of at most ``budget`` bytes of JSON
    (the backend takes 4 MiB): at least one, cut (``truncated``) when it alone is too big.

    16 bodies of 256 KiB a side, or one body of 4 MiB a side (``body_max_kib`` allows it),
    passed the backend's limit: every upload of them was 413, and being the oldest pending
    they held up every later body for good."""
    items: list[dict[str, Any]] = []
    used = len('{"bodies":[]}')
    for row_id, doc in docs:
        request, response, cut = str(doc["request"]), str(doc["response"]), bool(doc["truncated"])
        item = {"id": row_id, "request": request, "response": response, "truncated": cut}
        size = _size(item)
        while size > budget - used and not items:  # alone and too big: cut both sides until it fits
            request, response = request[: len(request) // 2], response[: len(response) // 2]
            item = {"id": row_id, "request": request, "response": response, "truncated": True}
            size = _size(item)
        if size > budget - used:
            break
        items.append(item)
        used += size + 1
    return items


def make_component() -> BodySync:
    return BodySync()
