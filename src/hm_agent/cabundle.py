"""Certificate bundles in the home.

- ``ca-bundle.pem``: the public CAs (certifi) plus the daemon's CA. Programs
  that read SSL_CERT_FILE / REQUESTS_CA_BUNDLE replace their trust store with
  that one file; giving them only our CA would break every other HTTPS
  connection they make, so the bundle carries both. When the user's shell
  already named a CA file (a corporate CA), ``halton-meter env`` builds
  ``ca-bundle-<hash>.pem`` with those certificates in it too, so the
  corporate CA is kept (named by content: two shells with different CAs never
  overwrite each other's bundle).
- ``node-ca-<hash>.pem`` / ``node-ca.pem``: the user's extra CAs plus ours, for
  NODE_EXTRA_CA_CERTS (Node adds it to its own public roots).
- ``upstream-ca.pem``: certifi plus ``[proxy] ssl_verify_upstream_trusted_ca``.
  mitmproxy 11 *replaces* its certifi store with that option's file, so a PEM
  for a private gateway alone would make every real provider fail
  verification; the daemon gives mitmproxy this union instead.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

from .home import HomePaths, write_atomic

MAX_PEM_BYTES = 16 * 1024 * 1024
_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]{16,65536}?-----END CERTIFICATE-----")


class PemError(Exception):
    """A CA file cannot be used; the message says which and why."""


def read_certificates(path: Path) -> list[bytes]:
    """The PEM CERTIFICATE blocks of a file (bounded in size). Raises PemError."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise PemError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_PEM_BYTES:
        raise PemError(f"{path} is larger than {MAX_PEM_BYTES // (1024 * 1024)} MiB; not a CA bundle")
    certs = [m.group(0).replace(b"\r\n", b"\n") for m in _CERT.finditer(data)]
    if not certs:
        raise PemError(f"{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return certs


def write_if_changed(path: Path, body: bytes) -> Path:
    try:
        if path.read_bytes() == body:
            return path
    except FileNotFoundError:
        pass
    write_atomic(path, body, 0o644)
    return path


def _unique(certs: Sequence[bytes]) -> list[bytes]:
    seen: set[bytes] = set()
    out = []
    for cert in certs:
        if cert not in seen:
            seen.add(cert)
            out.append(cert)
    return out


def _suffix(extra: Sequence[bytes]) -> str:
    return "-" + hashlib.sha256(b"\n".join(extra)).hexdigest()[:12] if extra else ""


def _public() -> bytes:
    import certifi

    return Path(certifi.where()).read_bytes().rstrip(b"\n") + b"\n"


def write_ca_bundle(hp: HomePaths, extra: Sequence[bytes] = ()) -> Path:
    """(Re)write certifi + `extra` + our CA if missing or stale; return its path."""
    extra = _unique(extra)
    ours = hp.ca_cert.read_bytes()
    body = _public()
    if extra:
        body += b"\n# CAs this shell trusted before halton-meter env\n" + b"\n".join(extra) + b"\n"
    body += b"\n# Halton Meter local proxy CA\n" + ours
    return write_if_changed(hp.home / f"ca-bundle{_suffix(extra)}.pem", body)


def write_node_ca(hp: HomePaths, extra: Sequence[bytes] = ()) -> Path:
    """The user's extra CAs plus ours, for NODE_EXTRA_CA_CERTS."""
    extra = _unique(extra)
    ours = hp.ca_cert.read_bytes()
    if not extra:
        return hp.ca_cert
    body = b"\n".join(extra) + b"\n\n# Halton Meter local proxy CA\n" + ours
    return write_if_changed(hp.home / f"node-ca{_suffix(extra)}.pem", body)


def write_upstream_bundle(hp: HomePaths, user_pem: str) -> Path:
    """certifi + the user's PEM: what mitmproxy verifies upstream servers against."""
    certs = read_certificates(Path(user_pem))
    body = _public() + b"\n# [proxy] ssl_verify_upstream_trusted_ca: " + user_pem.encode("utf-8", "replace") + b"\n"
    body += b"\n".join(certs) + b"\n"
    return write_if_changed(hp.home / "upstream-ca.pem", body)
