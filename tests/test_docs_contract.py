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
    pages = API_MD[API_MD.index("## Web pages"):]
    pages = pages[:pages.index("\n## ", 1)]
    paths = {p for _m, p in served}
    stale += sorted(p for p in set(re.findall(r"`(/[^`?\s]*)", pages)) if p not in paths)
    assert not stale, f"in docs/api.md but not served: {stale}"


def subcommands(group: click.Group) -> dict[str, click.Command]:
    """A group's commands, through list_commands/get_command (hm_cli's group loads them lazily)."""
    ctx = click.Context(group)
    found = {}
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is not None and not command.hidden:
            found[name] = command
    return found


def test_daemon_md_names_every_command() -> None:
    """docs/daemon.md's "## Commands" section names each command (in backticks, without the
    `halton-meter` prefix), and every `group sub` it names exists."""
    from hm_cli.main import cli

    daemon_md = (ROOT / "docs" / "daemon.md").read_text()
    section = daemon_md[daemon_md.index("## Commands"):]
    section = section[:section.index("\n## ", 1)]
    named = set(re.findall(r"`([a-z][a-z-]*(?: [a-z][a-z-]*)?)", section))
    top = subcommands(cli)
    assert {"start", "cloud", "budget", "service"} <= set(top)
    missing = sorted(name for name in top if not any(n.split(" ")[0] == name for n in named))
    assert not missing, f"commands not in docs/daemon.md's command list: {missing}"
    stale = sorted(
        n for n in named
        if " " in n and isinstance(top.get(n.split(" ")[0]), click.Group)
        and n.split(" ")[1] not in subcommands(top[n.split(" ")[0]])
    )
    assert not stale, f"docs/daemon.md names subcommands that do not exist: {stale}"


DOCS = [ROOT / "README.md", ROOT / "proto" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _options_of(command: click.Command) -> set[str]:
    found = {"--help", "-h"}
    for param in command.params:
        found.update(param.opts)
        found.update(param.secondary_opts)
    return found


def _cloud_server_commands() -> dict[str, set[str]]:
    """halton-meter-cloud's subcommands and their options (argparse)."""
    import argparse

    from hm_cloud.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {o for a in p._actions for o in a.option_strings} for name, p in sub.choices.items()}


def test_every_command_line_in_the_docs_uses_options_that_exist() -> None:
    from hm_cli.main import cli

    server = _cloud_server_commands()
    wrong = []
    for doc in DOCS:
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            for words, rest in re.findall(r"halton-meter-cloud((?: [a-z][a-z-]*)+)([^`#|;)\"']*)", line):
                name = words.split()[0]
                if name in server:
                    wrong += [f"{doc.name}:{n}: halton-meter-cloud {name} {o}"
                              for o in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest) if o not in server[name]]
            for words, rest in re.findall(r"halton-meter(?!-)((?: [a-z][a-z-]*)+)([^`#|;)\"']*)", line):
                command: click.Command = cli
                used = []
                for word in words.split():
                    below = subcommands(command) if isinstance(command, click.Group) else {}
                    if word not in below:
                        break
                    command = below[word]
                    used.append(word)
                if not used:
                    continue
                rest = words.split(" ".join(used), 1)[1] + rest
                wrong += [f"{doc.name}:{n}: halton-meter {' '.join(used)} {o}"
                          for o in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest) if o not in _options_of(command)]
    assert not wrong, f"the docs show options these commands do not have: {wrong}"
