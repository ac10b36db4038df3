"""An incremental Server-Sent Events splitter with bounded memory.

Bytes go in as they pass the proxy, in arbitrary network-sized pieces;
complete events come out. The splitter cuts at event boundaries (a blank
line) with C-level `bytes.find`/`split`, and only looks at the lines of an
event once it is whole; only the current unfinished event is held, and one
larger than `FULL_LIMIT` keeps just its head and tail
(see `bounded.BoundedBuffer`), so memory stays bounded for any stream.
"""

from __future__ import annotations

from typing import NamedTuple

from .bounded import FULL_LIMIT, BoundedBuffer


class SseEvent(NamedTuple):
    name: str | None
    data: bytes  # empty when `oversized` holds the data instead
    oversized: BoundedBuffer | None = None


def parse_event(raw: bytes) -> SseEvent | None:
    """One whole event's bytes (LF line ends) -> SseEvent, or None if it has no data."""
    raw = raw.strip(b"\n")
    if not raw:
        return None
    name: str | None = None
    if raw.startswith(b"event:"):  # fast path: "event: x\ndata: {...}" (Anthropic, Responses)
        end = raw.find(b"\n")
        if end > 0:
            rest = raw[end + 1 :]
            if rest.startswith(b"data:") and b"\n" not in rest:
                name = raw[6:end].strip().decode("utf-8", "replace")
                data = rest[5:]
                return SseEvent(name, data[1:] if data.startswith(b" ") else data)
    elif raw.startswith(b"data:") and b"\n" not in raw:  # fast path: OpenAI, Gemini
        data = raw[5:]
        return SseEvent(None, data[1:] if data.startswith(b" ") else data)
    data_lines: list[bytes] = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            data_lines.append(value[1:] if value.startswith(b" ") else value)
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode("utf-8", "replace")
        # id:, retry: and ":" comments carry nothing usage needs.
    if not data_lines:
        return None
    return SseEvent(name, b"\n".join(data_lines))


def _oversized_event(buf: BoundedBuffer) -> SseEvent:
    head = buf.head().lstrip(b"\n")
    name = None
    if head.startswith(b"event:"):
        line = head.split(b"\n", 1)[0]
        name = line[6:].strip().decode("utf-8", "replace")
    return SseEvent(name, b"", buf)  # JSON scans of the buffer ignore the "data:" prefix


class SseSplitter:
    """Cuts a byte stream into SSE events.

    `feed(chunk, markers, last_only)` only parses events whose bytes contain
    one of `markers` (None: every event); with `last_only`, only the last such
    event of the chunk. Events that cannot matter for usage (text deltas) are
    thus never looked at one by one: a chunk without a marker costs a few
    C-level scans of its bytes.
    """

    __slots__ = ("_pending", "_size", "_big", "_ends_nl", "_pending_cr")

    def __init__(self) -> None:
        self._pending: list[bytes] = []
        self._size = 0
        self._big: BoundedBuffer | None = None
        self._ends_nl = False
        self._pending_cr = False

    def feed(
        self, chunk: bytes, markers: tuple[bytes, ...] | None = None, last_only: bool = False
    ) -> list[SseEvent]:
        if not chunk:
            return []
        if self._pending_cr or b"\r" in chunk:
            chunk = self._normalise_cr(chunk)
        events: list[SseEvent] = []
        start = 0
        if self._ends_nl and chunk.startswith(b"\n"):  # a blank line split across chunks
            self._emit(events)
            start = 1
        cut = chunk.rfind(b"\n\n", start)
        if cut < 0:
            self._add(chunk[start:] if start else chunk)
            return events
        region = chunk[start:cut]
        if self._big is not None:  # the region's first event completes the oversized one
            first = region.find(b"\n\n")
            self._big.append(region if first < 0 else region[:first])
            self._emit(events)
            region = b"" if first < 0 else region[first + 2 :]
        elif self._pending:
            self._pending.append(region)
            region = b"".join(self._pending)
        self._pending, self._size, self._ends_nl = [], 0, False
        if region:
            self._select(region, markers, last_only, events)
        self._add(chunk[cut + 2 :])
        return events

    @staticmethod
    def _select(
        region: bytes, markers: tuple[bytes, ...] | None, last_only: bool, events: list[SseEvent]
    ) -> None:
        if markers is None:
            candidates = region.split(b"\n\n")
        elif last_only:
            at = max(region.rfind(marker) for marker in markers)
            if at < 0:
                return
            begin = region.rfind(b"\n\n", 0, at)
            end = region.find(b"\n\n", at)
            candidates = [region[begin + 2 if begin >= 0 else 0 : end if end >= 0 else len(region)]]
        else:
            if not any(marker in region for marker in markers):
                return
            candidates = [raw for raw in region.split(b"\n\n") if any(m in raw for m in markers)]
        for raw in candidates:
            event = parse_event(raw)
            if event is not None:
                events.append(event)

    def close(self) -> list[SseEvent]:
        """End of body: a final event without its blank line still counts."""
        events: list[SseEvent] = []
        self._emit(events)
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

    def _add(self, data: bytes) -> None:
        if not data:
            return
        self._ends_nl = data.endswith(b"\n")
        if self._big is not None:
            self._big.append(data)
            return
        self._pending.append(data)
        self._size += len(data)
        if self._size > FULL_LIMIT:
            big = BoundedBuffer()
            for piece in self._pending:
                big.append(piece)
            self._big, self._pending, self._size = big, [], 0

    def _emit(self, events: list[SseEvent]) -> None:
        if self._big is not None:
            events.append(_oversized_event(self._big))
            self._big = None
        elif self._pending:
            raw = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
            event = parse_event(raw)
            if event is not None:
                events.append(event)
        self._pending, self._size, self._ends_nl = [], 0, False
