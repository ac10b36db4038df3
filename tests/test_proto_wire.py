"""hm_proto._wire: Requests to HTTP/1.1 bytes and bytes back to Responses, via h11."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hm_proto import ClientConnection, LocalProtocolError, RemoteProtocolError, Request, Response


def serve(request_bytes: bytes, *events: h11.Event) -> tuple[h11.Request, bytes, bytes]:
    """Parse the client's bytes with an h11 server and answer with ``events``."""
    server = h11.Connection(our_role=h11.SERVER)
    server.receive_data(request_bytes)
    head = server.next_event()
    assert isinstance(head, h11.Request)
    body = b""
    while True:
        event = server.next_event()
        if isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
        else:
            raise AssertionError(event)
    out = b"".join(server.send(e) or b"" for e in events)
    return head, body, out


def test_request_bytes_carry_host_prefix_and_content_length() -> None:
    conn = ClientConnection("api.example:8443", "/api")
    request = Request(
        "POST", "/v1/pairing/start", (("Content-Type", "application/json"),), b'{"a":1}'
    )
    head, body, _ = serve(conn.send_request(request))
    headers = {k.decode(): v.decode() for k, v in head.headers}
    assert head.method == b"POST" and head.target == b"/api/v1/pairing/start"
    assert headers["host"] == "api.example:8443"
    assert headers["content-length"] == "7" and headers["content-type"] == "application/json"
    assert "user-agent" in headers
    assert body == b'{"a":1}'


def test_get_has_no_body_and_no_content_length() -> None:
    conn = ClientConnection("h")
    head, body, _ = serve(conn.send_request(Request("GET", "/v1/whoami")))
    assert body == b"" and b"content-length" not in dict(head.headers)


def test_content_length_answer_byte_by_byte() -> None:
    conn = ClientConnection("h")
    _, _, answer = serve(
        conn.send_request(Request("GET", "/v1/whoami")),
        h11.Response(status_code=200, headers=[("Content-Length", "11"), ("X-A", "b")]),
        h11.Data(data=b'{"ok":true}'),
        h11.EndOfMessage(),
    )
    responses = [conn.receive_data(answer[i : i + 1]) for i in range(len(answer))]
    assert all(r is None for r in responses[:-1])
    final = responses[-1]
    assert final == Response(200, (("content-length", "11"), ("x-a", "b")), b'{"ok":true}')
    assert final.header("X-A") == "b" and final.json() == {"ok": True}


@given(st.lists(st.binary(min_size=1, max_size=50), max_size=8), st.integers(1, 40))
def test_chunked_answers_round_trip(chunks: list[bytes], split: int) -> None:
    conn = ClientConnection("h")
    events: list[h11.Event] = [
        h11.Response(status_code=503, headers=[("Transfer-Encoding", "chunked")])
    ]
    events += [h11.Data(data=c) for c in chunks]
    events.append(h11.EndOfMessage())
    _, _, answer = serve(
        conn.send_request(Request("POST", "/v1/requests/batch", (), b"x")), *events
    )
    result = None
    for i in range(0, len(answer), split):
        assert result is None
        result = conn.receive_data(answer[i : i + split])
    assert result is not None and result.status == 503 and result.body == b"".join(chunks)


def test_keep_alive_allows_a_second_request_on_the_same_connection() -> None:
    conn = ClientConnection("h")
    server = h11.Connection(our_role=h11.SERVER)
    for n in range(3):
        assert conn.idle
        server.receive_data(conn.send_request(Request("GET", f"/v1/whoami?n={n}")))
        assert isinstance(server.next_event(), h11.Request)
        assert isinstance(server.next_event(), h11.EndOfMessage)
        out = server.send(h11.Response(status_code=200, headers=[("Content-Length", "1")])) or b""
        out += (server.send(h11.Data(data=str(n).encode())) or b"") + (
            server.send(h11.EndOfMessage()) or b""
        )
        response = conn.receive_data(out)
        assert response is not None and response.body == str(n).encode()
        assert conn.reusable
        conn.start_next_cycle()
        server.start_next_cycle()


def test_connection_close_answer_is_not_reusable() -> None:
    conn = ClientConnection("h")
    conn.send_request(Request("GET", "/"))
    response = conn.receive_data(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
    assert response is not None and response.status == 204
    assert not conn.reusable
    with pytest.raises(LocalProtocolError, match="reused"):
        conn.start_next_cycle()


def test_body_until_close_for_http_1_0_style_answers() -> None:
    conn = ClientConnection("h")
    conn.send_request(Request("GET", "/"))
    assert conn.receive_data(b"HTTP/1.1 200 OK\r\n\r\nhello") is None
    response = conn.receive_data(b"")
    assert response is not None and response.body == b"hello"


def test_informational_answers_are_skipped() -> None:
    conn = ClientConnection("h")
    conn.send_request(Request("POST", "/", (), b"x"))
    response = conn.receive_data(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    )
    assert response is not None and response.status == 200


@pytest.mark.parametrize(
    "garbage",
    [b"SMTP ready\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"],
)
def test_malformed_answers_are_remote_protocol_errors(garbage: bytes) -> None:
    conn = ClientConnection("h")
    conn.send_request(Request("GET", "/"))
    with pytest.raises(RemoteProtocolError, match="malformed HTTP"):
        conn.receive_data(garbage)


def test_eof_mid_answer_is_a_remote_protocol_error() -> None:
    conn = ClientConnection("h")
    conn.send_request(Request("GET", "/"))
    assert conn.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc") is None
    assert conn.answer_started
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(b"")


def test_eof_before_any_answer_is_a_remote_protocol_error() -> None:
    conn = ClientConnection("h")
    conn.send_request(Request("GET", "/"))
    with pytest.raises(RemoteProtocolError, match="closed"):
        conn.receive_data(b"")
    assert not conn.answer_started


def test_local_mistakes_are_local_protocol_errors() -> None:
    with pytest.raises(LocalProtocolError):
        ClientConnection("bad host")
    with pytest.raises(LocalProtocolError):
        ClientConnection("h", "api/")
    conn = ClientConnection("h")
    with pytest.raises(LocalProtocolError, match="start with '/'"):
        conn.send_request(Request("GET", "v1/whoami"))
    with pytest.raises(LocalProtocolError):
        conn.send_request(Request("GET", "/", (("Bad Header", "x"),)))
    conn2 = ClientConnection("h")
    conn2.send_request(Request("GET", "/"))
    with pytest.raises(LocalProtocolError):
        conn2.send_request(Request("GET", "/"))  # the first answer has not arrived yet
