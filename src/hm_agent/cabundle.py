"""ca-bundle.pem: the public CAs (certifi) plus the daemon's CA.

Programs that read SSL_CERT_FILE / REQUESTS_CA_BUNDLE replace their trust
store with that one file; giving them only our CA would break every other
HTTPS connection they make, so the bundle carries both.
"""

from __future__ import annotations

from pathlib import Path

from .home import HomePaths, write_atomic


def write_ca_bundle(hp: HomePaths) -> Path:
    """(Re)write the bundle if the CA exists and the bundle is missing or stale."""
    import certifi

    ours = hp.ca_cert.read_bytes()
    public = Path(certifi.where()).read_bytes()
    body = public.rstrip(b"\n") + b"\n\n# Halton Meter local proxy CA\n" + ours
    try:
        if hp.ca_bundle.read_bytes() == body:
            return hp.ca_bundle
    except FileNotFoundError:
        pass
    write_atomic(hp.ca_bundle, body, 0o644)
    return hp.ca_bundle
