"""node-proxy.cjs in the home: the NODE_OPTIONS preload that sends Node's fetch through the proxy."""

from __future__ import annotations

from pathlib import Path

from .cabundle import write_if_changed
from .home import HomePaths

SOURCE = Path(__file__).with_name("node-proxy.cjs")


def node_preload_path(hp: HomePaths) -> Path:
    return hp.home / "node-proxy.cjs"


def write_node_preload(hp: HomePaths) -> Path:
    """(Re)write the preload if missing or from another version; return its path."""
    return write_if_changed(node_preload_path(hp), SOURCE.read_bytes())
