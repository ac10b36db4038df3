"""An explicit proxy for the cloud ([cloud] proxy): tunnelled with CONNECT, never taken from the env."""

from __future__ import annotations

import pytest

from hm_proto import Request, Response, TransportFailure
from hm_proto_client import AsyncCloudClient, BadBaseUrl, SyncCloudClient
from tests.support.apiserver import Reply, running_server
from tests.support.connectproxy import ConnectProxy
from tests.support.tls import CertAuthority

WHOAMI = Request("GET", "/v1/whoami")


def test_sync_client_tunnels_plain_http_through_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # still ignored
    with running_server() as server, ConnectProxy() as proxy:
        server.add(Reply(200, {"ok": 1}), Reply(200, {"ok": 2}))
        with SyncCloudClient(server.url, timeout=5, proxy=proxy.url) as client:
            first, second = client.send(WHOAMI), client.send(WHOAMI)
        assert isinstance(first, Response) and first.json() == {"ok": 1}
        assert isinstance(second, Response) and second.json() == {"ok": 2}
        assert len(proxy.tunnels) == 1  # one tunnel, kept alive for both requests
        assert proxy.tunnels[0].endswith(f":{server.url.rsplit(':', 1)[1]}")


@pytest.mark.anyio
async def test_async_client_tunnels_tls_through_the_proxy(ca: CertAuthority) -> None:
    with running_server(ca.server_context()) as server, ConnectProxy() as proxy:
        server.add(Reply(200, {"ok": True}))
        async with AsyncCloudClient(server.url, timeout=5, cafile=str(ca.ca_path), proxy=proxy.url) as client:
            answer = await client.send(WHOAMI)
        assert isinstance(answer, Response) and answer.json() == {"ok": True}
        assert proxy.tunnels


def test_sync_client_tunnels_tls_through_the_proxy(ca: CertAuthority) -> None:
    with running_server(ca.server_context()) as server, ConnectProxy() as proxy:
        server.add(Reply(200, {"ok": True}))
        with SyncCloudClient(server.url, timeout=5, cafile=str(ca.ca_path), proxy=proxy.url) as client:
            answer = client.send(WHOAMI)
        assert isinstance(answer, Response) and answer.status == 200


@pytest.mark.anyio
async def test_a_refusing_proxy_is_a_connect_failure_that_names_it() -> None:
    with running_server() as server, ConnectProxy(refuse=True) as proxy:
        async with AsyncCloudClient(server.url, timeout=5, proxy=proxy.url) as client:
            answer = await client.send(WHOAMI)
        assert isinstance(answer, TransportFailure) and answer.kind == "connect"
        assert "403" in answer.detail and proxy.url.split("//")[1] in answer.detail
        with SyncCloudClient(server.url, timeout=5, proxy=proxy.url) as sync_client:
            failed = sync_client.send(WHOAMI)
        assert isinstance(failed, TransportFailure) and "refused to tunnel" in failed.detail


def test_a_proxy_must_be_a_plain_http_address() -> None:
    for bad in ("https://proxy:3128", "socks5://proxy:1080", "http://proxy:3128/path"):
        with pytest.raises(BadBaseUrl, match="proxy"):
            SyncCloudClient("https://api.example.com", proxy=bad)


def test_tunnel_handshake_bytes_and_answers() -> None:
    from hm_proto import LocalProtocolError, RemoteProtocolError, TunnelHandshake

    hs = TunnelHandshake("api.example.com:443")
    assert hs.request_bytes().startswith(b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n")
    assert hs.receive_data(b"HTTP/1.1 200 Conn") is False  # split anywhere
    assert hs.receive_data(b"ection established\r\n\r\n") is True and hs.leftover == b""
    refused = TunnelHandshake("api.example.com:443")
    refused.request_bytes()
    with pytest.raises(RemoteProtocolError, match="407"):
        refused.receive_data(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
    closed = TunnelHandshake("api.example.com:443")
    closed.request_bytes()
    with pytest.raises(RemoteProtocolError, match="closed"):
        closed.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        TunnelHandshake("bad host\r\n")
