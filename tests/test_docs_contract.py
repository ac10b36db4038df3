"""The docs name what the code serves: docs/api.md against the backend's routes (the living
cloud contract), docs/daemon.md's command list against the `halton-meter` command tree."""

from __future__ import annotations

import re
from pathlib import Path

import click
from starlette.routing import Mount, Route

ROOT = Path(__file__).resolve().parent.parent
API_MD = (ROOT / "docs" / "api.md").read_text()


def backend_routes(tmp_path: Path) -> list[tuple[str, frozenset[str]]]:
    """(path as the docs write it, methods) for every route of the real app, static files aside."""
    from hm_cloud.app import create_app
    from hm_cloud.db import init_schema, make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'c.sqlite'}")
    init_schema(engine)
    app = create_app(engine, "http://cloud.test")
    found = []
    for route in app.routes:
        if isinstance(route, Mount):
            continue
        assert isinstance(route, Route), route
        # /{workspace:slug}/settings/devices -> /<workspace>/settings/devices
        path = re.sub(r"\{(\w+)(:\w+)?\}", r"<\1>", route.path)
        found.append((path, frozenset(route.methods or ()) - {"HEAD"}))
    engine.dispose()
    return found


def documented_endpoints() -> set[tuple[str, str]]:
    """Every `METHOD /path` api.md names (query strings dropped)."""
    return {
        (method, path)
        for method, path in re.findall(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`?\s]*)", API_MD)
    }


def test_every_api_route_is_in_api_md(tmp_path: Path) -> None:
    documented = documented_endpoints()
    missing = []
    for path, methods in backend_routes(tmp_path):
        if path.startswith("/v1/") or path in ("/healthz", "/metrics"):
            missing += [f"{m} {path}" for m in sorted(methods) if (m, path) not in documented]
        elif f"`{path}" not in API_MD and f"{path}`" not in API_MD and f"{path}?" not in API_MD:
            missing.append(path)  # a page: named in "Web pages", in backticks
    assert not missing, f"served but not in docs/api.md: {missing}"


def test_every_endpoint_in_api_md_is_served(tmp_path: Path) -> None:
    served = {(m, path) for path, methods in backend_routes(tmp_path) for m in methods}
    stale = sorted(f"{m} {p}" for m, p in documented_endpoints() if (m, p) not in served)
    assert not stale, f"in docs/api.md but not served: {stale}"


def command_paths(group: click.Group, prefix: str = "") -> set[str]:
    paths = set()
    for name, command in group.commands.items():
        if command.hidden:
            continue
        paths.add(prefix + name)
        if isinstance(command, click.Group):
            paths |= command_paths(command, prefix + name + " ")
    return paths


def test_daemon_md_names_every_command() -> None:
    from hm_cli.main import cli

    daemon_md = (ROOT / "docs" / "daemon.md").read_text()
    named = set(re.findall(r"halton-meter ([a-z][a-z-]*(?: [a-z][a-z-]*)?)", daemon_md))
    named |= {first for pair in named for first in [pair.split(" ")[0]]}
    commands = command_paths(cli)
    missing = sorted(c for c in commands if c not in named)
    assert not missing, f"commands not in docs/daemon.md: {missing}"
    groups = {name: c for name, c in cli.commands.items() if isinstance(c, click.Group)}
    stale = sorted(
        n for n in named
        if " " in n and n.split(" ")[0] in groups and n.split(" ")[1] not in groups[n.split(" ")[0]].commands
    )
    assert not stale, f"docs/daemon.md names subcommands that do not exist: {stale}"
