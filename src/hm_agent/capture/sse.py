"""An incremental Server-Sent Events splitter with bounded memory.

Bytes go in as they pass the proxy, in arbitrary network-sized pieces;
complete events come out. Only the current line and the current event's data
are held, and an oversized line keeps just its head and tail
(see `bounded.BoundedBuffer`), so memory stays bounded for any stream.
"""

from __future__ import annotations

from dataclasses import dataclass

from .bounded import FULL_LIMIT, BoundedBuffer


@dataclass(frozen=True, slots=True)
class SseEvent:
    name: str | None
    data: bytes  # empty when `oversized` holds the data instead
    oversized: BoundedBuffer | None = None


class SseSplitter:
    __slots__ = ("_partial", "_big_line", "_name", "_data", "_big_data", "_pending_cr")

    def __init__(self) -> None:
        self._partial = b""
        self._big_line: BoundedBuffer | None = None
        self._name: str | None = None
        self._data: list[bytes] = []
        self._big_data: BoundedBuffer | None = None
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[SseEvent]:
        if not chunk:
            return []
        if b"\r" in chunk or self._pending_cr:
            chunk = self._normalise_cr(chunk)
        events: list[SseEvent] = []
        lines = chunk.split(b"\n")
        last = lines.pop()
        for index, line in enumerate(lines):
            if index == 0:
                if self._big_line is not None:
                    self._big_line.append(line)
                    self._line_done(b"", events)
                    continue
                if self._partial:
                    line = self._partial + line
                    self._partial = b""
            self._line_done(line, events)
        self._keep_partial(last, started_new=bool(lines))
        return events

    def _normalise_cr(self, chunk: bytes) -> bytes:
        # CRLF and lone CR both end a line; a CR at a chunk's end may be half a CRLF.
        if self._pending_cr:
            self._pending_cr = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        if chunk.endswith(b"\r"):
            self._pending_cr = True
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    def _keep_partial(self, rest: bytes, started_new: bool) -> None:
        if started_new:
            self._partial = b""
            self._big_line = None
        if self._big_line is not None:
            self._big_line.append(rest)
            return
        if len(self._partial) + len(rest) > FULL_LIMIT:
            big = BoundedBuffer()
            big.append(self._partial)
            big.append(rest)
            self._big_line, self._partial = big, b""
            return
        self._partial += rest

    def _line_done(self, line: bytes, events: list[SseEvent]) -> None:
        big, self._big_line = self._big_line, None
        if big is not None:
            head = big.head()
            if head.startswith(b"data:"):
                self._big_data = big  # keeps the "data:" prefix; JSON scans ignore it
            return
        if not line:
            self._dispatch(events)
            return
        if line.startswith(b"data:"):
            value = line[5:]
            if value.startswith(b" "):
                value = value[1:]
            self._data.append(value)
        elif line.startswith(b"event:"):
            self._name = line[6:].strip().decode("utf-8", "replace")
        # id:, retry: and ":" comments carry nothing usage needs.

    def _dispatch(self, events: list[SseEvent]) -> None:
        if self._data or self._big_data is not None:
            data = b"\n".join(self._data) if len(self._data) != 1 else self._data[0]
            events.append(SseEvent(self._name, b"" if self._big_data else data, self._big_data))
        self._name = None
        self._data = []
        self._big_data = None

    def close(self) -> list[SseEvent]:
        """End of body: a final event without its blank line still counts."""
        events: list[SseEvent] = []
        if self._big_line is not None or self._partial:
            self._line_done(self._partial, events)
            self._partial = b""
        self._dispatch(events)
        return events
