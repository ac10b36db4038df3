"""hm_proto's public surface: what the daemon may import, and the server namespace."""
# hm_proto_client is held to the same rule: the daemon uses only its __all__.

from __future__ import annotations

import ast
from pathlib import Path

import hm_proto
import hm_proto.server
import hm_proto_client

SRC = Path(__file__).resolve().parent.parent / "src"


def test_the_daemon_the_cli_and_the_backend_import_no_private_hm_proto_name() -> None:
    offenders = []
    for path in sorted(SRC.glob("hm_[!p]*/**/*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hm_proto"):
                module = node.module or ""
                if any(part.startswith("_") for part in module.split(".")):
                    offenders.append(f"{path.relative_to(SRC)}: from {module}")
                public = {
                    "hm_proto": hm_proto.__all__,
                    "hm_proto.server": hm_proto.server.__all__,
                    "hm_proto_client": hm_proto_client.__all__,
                }.get(module, [])
                offenders += [
                    f"{path.relative_to(SRC)}: {alias.name} from {module}"
                    for alias in node.names
                    if alias.name not in public
                ]
    assert not offenders, offenders


def test_every_exported_name_exists_and_server_helpers_stay_out_of_the_client_surface() -> None:
    for module in (hm_proto, hm_proto.server, hm_proto_client):
        assert all(hasattr(module, name) for name in module.__all__)
    for name in ("generate_token", "hash_token", "token_matches", "parse_row"):
        assert name not in hm_proto.__all__ and name in hm_proto.server.__all__
