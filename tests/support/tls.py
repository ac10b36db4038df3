"""A throwaway test CA and a small local HTTPS server that answers like an LLM API.

``make_ca(dir)`` writes a CA and a leaf certificate for localhost/127.0.0.1;
give ``ca.ca_path`` to the daemon (``ssl_verify_upstream_trusted_ca``) so it
trusts the server. ``LocalTLSServer`` speaks HTTP/1.1 with keep-alive: POST
``/v1/chat/completions`` answers an OpenAI-shaped JSON body with usage (or an
SSE stream when the request says ``"stream": true``); GET answers ``ok``.
It records what it received so tests can check what reached upstream.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class CertAuthority:
    ca_path: Path  # the CA certificate (PEM): what clients/the daemon trust
    cert_path: Path  # leaf + CA chain (PEM) for the server
    key_path: Path  # leaf private key (PEM)

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))


def make_ca(directory: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"), name: str = "HM Test CA") -> CertAuthority:
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "server-chain.pem", directory / "server-key.pem"
    ca_path.write_bytes(ca_cert.public_bytes(pem))
    cert_path.write_bytes(leaf.public_bytes(pem) + ca_cert.public_bytes(pem))
    key_path.write_bytes(leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    key_path.chmod(0o600)
    return CertAuthority(ca_path, cert_path, key_path)


def chat_completion(model: str, prompt_tokens: int = 12, completion_tokens: int = 5) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 1764000000, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stalls
    owner: LocalTLSServer  # set by each server's subclass

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self.owner._record(Received("GET", self.path, dict(self.headers), b""))
        self._send(200, b"ok", "text/plain")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        owner = self.owner
        owner._record(Received("POST", self.path, dict(self.headers), body))
        try:
            req = json.loads(body) if body else {}
        except ValueError:
            req = {}
        model = str(req.get("model") or "gpt-4o-mini")
        if owner.delay_s:
            time.sleep(owner.delay_s)
        if req.get("stream"):
            self._stream(model)
            return
        answer = chat_completion(model)
        if model in owner.usage_by_model:  # a hostile or buggy upstream's usage object
            answer["usage"] = owner.usage_by_model[model]
        self._send(200, json.dumps(answer).encode())

    def _stream(self, model: str) -> None:
        owner = self.owner
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = []
        for word in ("hel", "lo"):
            events.append({"id": "c1", "object": "chat.completion.chunk", "model": model,
                           "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]})
        events.append({"id": "c1", "object": "chat.completion.chunk", "model": model, "choices": [],
                       "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}})
        payloads = [f"data: {json.dumps(e)}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]
        for n, payload in enumerate(payloads):
            self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
            self.wfile.flush()
            if n == 0 and owner.hold_first_event is not None:
                owner.hold_first_event.wait(10)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class Serving:
    """A TLS HTTP server answering on 127.0.0.1 in a daemon thread (see :func:`serve_tls`)."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self.server, self.thread = server, thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class ServesTLS:
    """``port`` and ``base_url`` of a fake upstream serving through :func:`serve_tls` (``self._serving``)."""

    _serving: Serving | None

    @property
    def port(self) -> int:
        assert self._serving is not None
        return self._serving.port

    @property
    def base_url(self) -> str:
        return f"https://localhost:{self.port}"


def serve_tls(
    ca: CertAuthority, handler: type[BaseHTTPRequestHandler], *, alpn: list[str] | None = None,
    name: str = "fake-tls",
) -> Serving:
    """Serve ``handler`` over TLS (the CA's leaf certificate, ALPN ``alpn`` if given) on a free
    127.0.0.1 port, one daemon thread per connection; ``.stop()`` shuts it down."""
    context = ca.server_context()
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True)
    thread.start()
    return Serving(server, thread)


@dataclass
class LocalTLSServer:
    """``with LocalTLSServer(ca) as srv:`` serves https://localhost:{srv.port}/ on 127.0.0.1."""

    ca: CertAuthority
    delay_s: float = 0.0
    hold_first_event: threading.Event | None = None
    usage_by_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def _record(self, item: Received) -> None:
        with self._lock:
            self.received.append(item)

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def __enter__(self) -> LocalTLSServer:
        class Handler(_Handler):
            owner = self

        self._serving = serve_tls(self.ca, Handler, name="local-tls")
        self.port = self._serving.port
        return self

    def __exit__(self, *exc: object) -> None:
        self._serving.stop()
