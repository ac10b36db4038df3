"""An SMTP server (aiosmtpd) on loopback that keeps what it is sent, for the backend's e-mail tests.

    with smtp_sink(monkeypatch) as sink:      # also points HALTON_METER_CLOUD_SMTP_URL at it
        ...
        sink.messages                          # [(recipients, raw message bytes)]
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Sink:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 OK"


@contextmanager
def smtp_sink(monkeypatch: Any, sender: str = "alerts@example.com") -> Iterator[Sink]:
    from aiosmtpd.controller import Controller

    from .daemon import free_port

    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setenv("HALTON_METER_CLOUD_SMTP_URL", f"smtp://127.0.0.1:{port}")
    monkeypatch.setenv("HALTON_METER_CLOUD_SMTP_FROM", sender)
    try:
        yield sink
    finally:
        controller.stop()
