"""Local fake LLM upstreams that speak each provider's real wire format.

One TLS server (a test CA signs its certificate for localhost/127.0.0.1)
answers the OpenAI, Anthropic and Gemini endpoints from the fixtures in
tests/fixtures/capture/: JSON bodies, or SSE written event by event with
chunked transfer encoding and an optional gzip/br/zstd Content-Encoding that
is flushed after every event (as real servers do).

A test can hold a stream after its first event (`hold_after_first`): the
server waits for the test to call `release()` before sending the rest, which
proves the client saw event 1 while upstream still held the others.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "capture"


# -- a throwaway CA -------------------------------------------------------------

@dataclass(frozen=True)
class TestCA:
    ca_pem: Path  # give this to the daemon (ssl_verify_upstream_trusted_ca)
    cert_pem: Path  # the server's chain (leaf + CA)
    key_pem: Path


def make_test_ca(directory: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> TestCA:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Halton Meter test CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_path.write_bytes(ca_cert.public_bytes(pem))
    cert_path.write_bytes(cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    key_path.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return TestCA(ca_path, cert_path, key_path)


# -- streaming encoders -------------------------------------------------------------

class _Encoder:
    """Compresses a stream piece by piece, flushing so each event can be decoded at once."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        if encoding == "gzip":
            self._z: Any = zlib.compressobj(wbits=31)
        elif encoding == "br":
            import brotli

            self._z = brotli.Compressor()
        elif encoding == "zstd":
            import zstandard

            self._z = zstandard.ZstdCompressor().compressobj()

    def piece(self, data: bytes) -> bytes:
        if self.encoding == "gzip":
            return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)
        if self.encoding == "br":
            return bytes(self._z.process(data)) + bytes(self._z.flush())
        if self.encoding == "zstd":
            import zstandard

            return self._z.compress(data) + self._z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        return data

    def end(self) -> bytes:
        if self.encoding == "gzip":
            return self._z.flush()
        if self.encoding == "br":
            return bytes(self._z.finish())
        if self.encoding == "zstd":
            return self._z.flush()
        return b""


def sse_events(body: bytes) -> list[bytes]:
    """A recorded SSE body split into its events (each with its blank line)."""
    return [event + b"\n\n" for event in body.split(b"\n\n") if event.strip()]


def gemini_array_chunks(body: bytes) -> list[bytes]:
    """Gemini's JSON-array stream split where the real server flushes: before each ','."""
    parts = body.split(b"\n,\n")
    return [parts[0]] + [b"\n,\n" + p for p in parts[1:]]


# -- the server ----------------------------------------------------------------

@dataclass
class Seen:
    """One request as upstream received it (for assertions)."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    fixture: str
    events_sent: int = 0
    held_until_released: bool = False


ERROR_BODIES = {
    "openai": {"error": {"message": "Rate limit reached", "type": "requests", "param": None,
                         "code": "rate_limit_exceeded"}},
    "anthropic": {"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limited"}},
    "gemini": {"error": {"code": 429, "message": "Resource exhausted", "status": "RESOURCE_EXHAUSTED"}},
}


@dataclass
class FakeProviders:
    ca: TestCA
    encoding: str = ""  # "", "gzip", "br" or "zstd" (only when the client accepts it)
    hold_after_first: bool = False
    seen: list[Seen] = field(default_factory=list)
    _release: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"https://localhost:{self.port}"

    def hold(self) -> None:
        """Hold every stream after its first event until `release()`."""
        self._release = threading.Event()
        self.hold_after_first = True

    def release(self) -> None:
        self.hold_after_first = False
        self._release.set()

    def start(self) -> FakeProviders:
        owner = self
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca.cert_pem, self.ca.key_pem)
        context.set_alpn_protocols(["http/1.1"])

        class Handler(_Handler):
            providers = owner

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-providers", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeProviders:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    providers: FakeProviders
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Real API servers send each event at once; without this, Nagle holds
        # a small event back until the previous one is acknowledged.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        dialect, fixture = route(url.path, body, query)
        seen = Seen("POST", url.path, {k.lower(): v for k, v in self.headers.items()}, body, fixture)
        self.providers.seen.append(seen)
        if fixture == "":
            self._send_json(404, {"error": {"message": "not found"}}, "")
            return
        model = str(body.get("model", ""))
        if model.startswith("error-") or "error-" in url.path:
            self._send_json(429, ERROR_BODIES[dialect], "")
            return
        encoding = self._pick_encoding()
        data = (FIXTURES / fixture).read_bytes()
        if model.startswith("acme-") and fixture.endswith(".json"):  # a model no price list knows
            doc = json.loads(data)
            doc["model"] = model
            data = json.dumps(doc).encode()
        if fixture.endswith(".sse"):
            self._send_stream(sse_events(data), "text/event-stream", encoding, seen)
        elif fixture == "gemini_stream.json":
            self._send_stream(gemini_array_chunks(data), "application/json", encoding, seen)
        else:
            self._send_json(200, data, encoding)

    def _pick_encoding(self) -> str:
        wanted = self.providers.encoding
        accepted = self.headers.get("accept-encoding", "")
        return wanted if wanted and wanted in accepted else ""

    def _send_json(self, status: int, payload: Any, encoding: str) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        if encoding:
            encoder = _Encoder(encoding)
            data = encoder.piece(data) + encoder.end()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _send_stream(self, pieces: list[bytes], content_type: str, encoding: str, seen: Seen) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self.end_headers()
        encoder = _Encoder(encoding)
        try:
            for index, piece in enumerate(pieces):
                self._chunk(encoder.piece(piece))
                seen.events_sent = index + 1
                if index == 0 and self.providers.hold_after_first:
                    seen.held_until_released = self.providers._release.wait(10)
            self._chunk(encoder.end())
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True  # the client hung up (the openai SDK does so after [DONE])

    def _chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()


def route(path: str, body: dict[str, Any], query: dict[str, list[str]]) -> tuple[str, str]:
    """(dialect, fixture file) for a request; fixture "" means 404."""
    stream = body.get("stream") is True
    if path.endswith("/chat/completions"):
        if not stream:
            return "openai", "openai_reasoning_chat.json" if str(body.get("model", "")).startswith("o") \
                else "openai_chat.json"
        options = body.get("stream_options") or {}
        with_usage = isinstance(options, dict) and options.get("include_usage") is True
        return "openai", "openai_chat_stream.sse" if with_usage else "openai_chat_stream_no_usage.sse"
    if path.endswith("/responses"):
        return "openai", "openai_responses_stream.sse" if stream else "openai_responses.json"
    if path.endswith("/completions"):
        return "openai", "openai_completions_stream.sse" if stream else "openai_completions.json"
    if path.endswith("/embeddings"):
        return "openai", "openai_embeddings.json"
    if path.endswith("/messages"):
        return "anthropic", "anthropic_messages_stream.sse" if stream else "anthropic_messages.json"
    if path.endswith(":generateContent"):
        return "gemini", "gemini_generate.json"
    if path.endswith(":streamGenerateContent"):
        return "gemini", "gemini_stream.sse" if query.get("alt") == ["sse"] else "gemini_stream.json"
    return "openai", ""
