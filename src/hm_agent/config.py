"""config.toml: commented defaults, strict parsing, comment-preserving updates.

Parsing uses the standard library's tomllib (fast: ``status`` reads this
file). A malformed file is reported with its line and key; keys we do not
know are reported as warnings rather than ignored silently. Updates (from
``halton-meter cloud connect``/``disconnect``) go through tomlkit so the
user's comments and other keys survive, and are written atomically.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .home import HomePaths, paths, read_regular, write_atomic

DEFAULT_BASE_URL = "https://api.haltonmeter.com"
DEFAULT_LISTEN_HOST = "127.0.0.1"
DEFAULT_LISTEN_PORT = 8090
DIALECTS = ("openai", "anthropic", "gemini", "bedrock")

DEFAULT_CONFIG_TEXT = f'''\
# Halton Meter configuration. Lines starting with # are comments.
# Restart the daemon after editing: halton-meter restart

[proxy]
# The proxy listens on loopback only; programs reach it via HTTPS_PROXY
# (see: halton-meter env).
listen_host = "{DEFAULT_LISTEN_HOST}"
listen_port = {DEFAULT_LISTEN_PORT}
# A PEM file of extra CAs to trust for upstream servers (self-hosted gateways).
# Empty: upstream certificates are verified against the public CAs (certifi).
ssl_verify_upstream_trusted_ca = ""
# Decrypt traffic to hosts that are not LLM APIs too (default: pass it through untouched).
intercept_other_hosts = false

[capture]
# Streamed OpenAI-style chat calls report usage only when they ask for it
# (stream_options.include_usage). true: the proxy asks for them and removes the
# extra usage chunk before the program sees the stream, so the row is exact.
inject_stream_usage = true
# Keep the prompts and answers of metered calls (docs/capture.md, "Bodies"):
# "off" (default), "local" (encrypted in db.sqlite), or "sync" (also uploaded
# when the workspace accepts bodies). Keys in them are masked; add patterns:
# bodies = "off"
# body_max_kib = 256
# redact = ["ACME-[0-9]{6}"]
# api.openai.com, api.anthropic.com and generativelanguage.googleapis.com are
# captured by default. Add OpenAI-compatible gateways like this
# (dialect: openai, anthropic, gemini or bedrock; a host may include :port):
# [[capture.hosts]]
# host = "llm.internal.example:8443"
# dialect = "openai"

[pricing]
# Prices for models the price library does not know (USD per million tokens):
# [[pricing.override]]
# model = "my-finetune"
# input_mtok = "0.50"
# output_mtok = "1.50"

[attribution]
# Each call is attributed to the calling program's project, git repository,
# branch, program name and OS user (names only, never paths; docs/capture.md).
enabled = true
# What is uploaded to the cloud once paired (the local report always has all):
sync_project = true
sync_repo = true
sync_branch = true
sync_program = true
sync_os_user = true
sync_tags = true
# Name the project by folder, whatever the repository is called:
# [[attribution.rules]]
# path = "~/code/acme/**"
# project = "acme"
# tags = {{ team = "ml" }}

# Budgets (docs/budgets.md): spend per local day, week or month, alerts at
# thresholds (percent of limit_usd), and optionally a block at 100%.
# [[budgets]]
# name = "monthly"
# period = "month"                    # day | week | month
# limit_usd = 100
# scope = {{ provider = "openai" }}     # optional: provider, model
# thresholds = [50, 80, 100]
# action = "notify"                   # notify | block
#
# [[alerts.webhooks]]
# url = "https://hooks.slack.com/services/..."

[retention]
# Delete local rows older than this many days (whole UTC days: 30 keeps today
# and the 30 days before it). Unset: keep everything. Rows not yet uploaded are
# kept while cloud sync is on (docs/daemon.md, "Retention").
# days = 90

[metrics]
# Prometheus metrics at http://127.0.0.1:9464/metrics (docs/metrics.md); loopback only.
# listen = "127.0.0.1:9464"

[otel]
# OpenTelemetry GenAI metrics over OTLP/HTTP (pip install 'halton-meter[otel]'):
# endpoint = "http://127.0.0.1:4318/v1/metrics"
# interval_s = 60

[cloud]
# Cloud sync is off until you run: halton-meter cloud connect
enabled = false
base_url = "{DEFAULT_BASE_URL}"
# Only if this machine must reach the cloud through an HTTP proxy (the daemon
# never uses HTTPS_PROXY, which points programs at the daemon itself):
# proxy = "http://proxy.example.com:3128"
'''

_KNOWN: dict[str, set[str]] = {
    "proxy": {"listen_host", "listen_port", "ssl_verify_upstream_trusted_ca", "intercept_other_hosts"},
    "capture": {"hosts", "inject_stream_usage", "bodies", "body_max_kib", "redact"},
    "pricing": {"override"},
    "cloud": {"enabled", "base_url", "workspace_id", "workspace_slug", "sync_bodies", "proxy"},
    "attribution": {"enabled", "rules", "sync_project", "sync_repo", "sync_branch", "sync_program",
                    "sync_os_user", "sync_tags"},
    "budgets": set(),  # [[budgets]] entries: checked by hm_agent.budgets
    "alerts": {"webhooks"},
    "metrics": {"listen"},
    "retention": {"days"},
    "otel": {"endpoint", "interval_s", "timeout_s", "headers"},
}


class ConfigError(Exception):
    """config.toml cannot be used; the message names the line and key and how to fix it.

    ``errors`` holds every problem found (one line each, with its line number);
    the message is that one line, or a header and the lines when there are several.
    """

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or [message]


def _raise_all(errors: list[str], path: Path) -> None:
    if len(errors) == 1:
        raise ConfigError(errors[0])
    if errors:
        lines = "\n".join(f"  {e}" for e in errors)
        raise ConfigError(f"{path} has {len(errors)} problems:\n{lines}", errors)


@dataclass(slots=True)
class Config:
    path: Path
    listen_host: str = DEFAULT_LISTEN_HOST
    listen_port: int = DEFAULT_LISTEN_PORT
    ssl_verify_upstream_trusted_ca: str = ""
    intercept_other_hosts: bool = False
    capture_hosts: list[tuple[str, str]] = field(default_factory=list)
    inject_stream_usage: bool = True
    pricing_overrides: list[dict[str, Any]] = field(default_factory=list)
    cloud_enabled: bool = False
    cloud_base_url: str = DEFAULT_BASE_URL
    cloud_workspace_id: str | None = None
    cloud: dict[str, Any] = field(default_factory=dict)
    """The whole [cloud] table as parsed, for keys the cloud worker adds."""
    attribution: dict[str, Any] = field(default_factory=dict)
    """The validated [attribution] table (hm_agent.attribution.settings_from_config reads it)."""
    budgets: list[Any] = field(default_factory=list)
    """[[budgets]] as hm_agent.budgets.Budget (docs/budgets.md)."""
    alert_webhooks: list[str] = field(default_factory=list)
    metrics_listen: str | None = None
    otel: dict[str, Any] | None = None
    retention_days: int | None = None
    bodies: Any = None
    """[capture] bodies, body_max_kib, redact as hm_agent.bodies.BodySettings (None: off)."""
    """[retention] days: delete local rows of UTC days before today minus this; None keeps all."""
    """[otel]: endpoint, interval_s, timeout_s, headers when an endpoint is set (hm_agent.otel)."""
    """[metrics] listen: "127.0.0.1:9464" serves Prometheus /metrics there (docs/metrics.md)."""
    warnings: list[str] = field(default_factory=list)
    """Unknown keys and other non-fatal findings, one line each."""


def ensure_config(hp: HomePaths) -> None:
    """Write the commented defaults if there is no config.toml yet."""
    if not hp.config.exists():
        write_atomic(hp.config, DEFAULT_CONFIG_TEXT.encode(), 0o600)


def load_config(home: Path | HomePaths | None = None) -> Config:
    """Parse config.toml (defaults if it does not exist). Raises ConfigError."""
    hp = home if isinstance(home, HomePaths) else paths(home)
    try:
        text = read_regular(hp.config).decode("utf-8")
    except FileNotFoundError:
        text = DEFAULT_CONFIG_TEXT
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {hp.config}: {exc}. Make it a regular UTF-8 file of at most 1 MiB (or move it away for the defaults).") from None
    return parse_config(text, hp.config)


def parse_config(text: str, path: Path) -> Config:
    """Parse the text of config.toml. Collects every problem, then raises them at once."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_describe_syntax_error(text, path, exc)) from None
    except RecursionError:  # tomllib recurses once per nesting level of arrays and inline tables
        raise ConfigError(
            f"{path}: arrays or tables nested too deeply to read. Fix it, or move it away to get the defaults"
        ) from None
    cfg = Config(path=path)
    where = _Locator(text, path)
    errors: list[str] = []

    for section, value in data.items():
        if section not in _KNOWN:
            cfg.warnings.append(
                f"{where.at(section, None)}: unknown section [{section}] (ignored){_did_you_mean(section, _KNOWN)}"
            )
            continue
        if section == "budgets":
            continue
        if not isinstance(value, dict):
            errors.append(f"{where.at(section, None)}: `{section}` must be a table like [{section}]")
            continue
        for key in value:
            if key not in _KNOWN[section]:
                cfg.warnings.append(
                    f"{where.at(section, key)}: unknown key {section}.{key} (ignored)"
                    f"{_did_you_mean(key, _KNOWN[section])}"
                )

    def table(name: str) -> dict[str, Any]:
        value = data.get(name, {})
        return value if isinstance(value, dict) else {}

    def get(tbl: dict[str, Any], section: str, key: str, kind: type, default: Any) -> Any:
        try:
            return _get(tbl, section, key, kind, default, where)
        except ConfigError as exc:
            errors.append(str(exc))
            return default

    proxy = table("proxy")
    cfg.listen_host = get(proxy, "proxy", "listen_host", str, DEFAULT_LISTEN_HOST)
    cfg.listen_port = get(proxy, "proxy", "listen_port", int, DEFAULT_LISTEN_PORT)
    if not 1 <= cfg.listen_port <= 65535:
        errors.append(f"{where.at('proxy', 'listen_port')}: proxy.listen_port must be 1-65535, not {cfg.listen_port}")
        cfg.listen_port = DEFAULT_LISTEN_PORT
    cfg.ssl_verify_upstream_trusted_ca = get(proxy, "proxy", "ssl_verify_upstream_trusted_ca", str, "")
    if cfg.ssl_verify_upstream_trusted_ca:
        ca = Path(cfg.ssl_verify_upstream_trusted_ca).expanduser()
        if not ca.is_file():
            errors.append(
                f"{where.at('proxy', 'ssl_verify_upstream_trusted_ca')}: "
                f"proxy.ssl_verify_upstream_trusted_ca: no such file {ca}. Point it at a PEM file or set it to \"\"."
            )
        cfg.ssl_verify_upstream_trusted_ca = str(ca)
    cfg.intercept_other_hosts = get(proxy, "proxy", "intercept_other_hosts", bool, False)

    capture = table("capture")
    cfg.inject_stream_usage = get(capture, "capture", "inject_stream_usage", bool, True)
    hosts = capture.get("hosts", [])
    if not isinstance(hosts, list):
        errors.append(f"{where.at('capture', 'hosts')}: capture.hosts must be written as [[capture.hosts]] entries")
        hosts = []
    for n, entry in enumerate(hosts, 1):
        label = f"capture.hosts entry {n}"
        if not isinstance(entry, dict) or not isinstance(entry.get("host"), str) or not entry["host"]:
            errors.append(f"{where.entry('capture.hosts', n, 'host')}: {label}: needs host = \"name[:port]\"")
            continue
        dialect = entry.get("dialect", "openai")
        if dialect not in DIALECTS:
            errors.append(
                f"{where.entry('capture.hosts', n, 'dialect')}: {label}: dialect must be one of "
                f"{', '.join(DIALECTS)}, not {dialect!r}{_did_you_mean(str(dialect), DIALECTS)}"
            )
            continue
        for key in entry:
            if key not in ("host", "dialect"):
                cfg.warnings.append(
                    f"{where.entry('capture.hosts', n, key)}: {label}: unknown key {key} (ignored)"
                    f"{_did_you_mean(key, ('host', 'dialect'))}"
                )
        cfg.capture_hosts.append((entry["host"].strip().lower(), dialect))

    pricing = table("pricing")
    overrides = pricing.get("override", [])
    if not isinstance(overrides, list) or not all(isinstance(o, dict) for o in overrides):
        errors.append(f"{where.at('pricing', 'override')}: pricing overrides must be [[pricing.override]] entries")
        overrides = []
    for n, entry in enumerate(overrides, 1):
        label = f"pricing.override entry {n}"
        for key in entry:
            if key in _OVERRIDE_DEPRECATED:
                cfg.warnings.append(
                    f"{where.entry('pricing.override', n, key)}: {label}: {key} is deprecated (still read); "
                    f"rename it {_OVERRIDE_DEPRECATED[key]}"
                )
            elif key not in _OVERRIDE_KEYS:
                cfg.warnings.append(
                    f"{where.entry('pricing.override', n, key)}: {label}: unknown key {key} (ignored)"
                    f"{_did_you_mean(key, _OVERRIDE_KEYS)}"
                )
    cfg.pricing_overrides = [dict(o) for o in overrides]

    cloud = table("cloud")
    cfg.cloud = dict(cloud)
    cfg.cloud_enabled = get(cloud, "cloud", "enabled", bool, False)
    cfg.cloud_base_url = get(cloud, "cloud", "base_url", str, DEFAULT_BASE_URL).rstrip("/")
    if not re.match(r"^https?://[^\s/]+", cfg.cloud_base_url):
        errors.append(f"{where.at('cloud', 'base_url')}: cloud.base_url must be an http(s) URL, not {cfg.cloud_base_url!r}")
    workspace = cloud.get("workspace_id")
    cfg.cloud_workspace_id = str(workspace) if workspace else None
    try:
        cfg.attribution = _parse_attribution(table("attribution"), path, where)
    except ConfigError as exc:
        errors.append(str(exc))

    from .budgets import parse_budgets, parse_webhooks
    from .otel import parse_otel

    def checked(parse: Any, default: Any) -> Any:
        """A section's own parser; its error (a ValueError) joins the others."""
        try:
            return parse()
        except (ConfigError, ValueError) as exc:  # BudgetConfigError, OtelConfigError are ValueErrors
            errors.append(str(exc))
            return default

    cfg.budgets = checked(lambda: parse_budgets(data.get("budgets"), where.at("budgets", None)), [])
    cfg.alert_webhooks = checked(lambda: parse_webhooks(data.get("alerts"), where.at("alerts", None)), [])
    cfg.metrics_listen = checked(lambda: _loopback_listen(table("metrics"), "metrics", where), None)
    cfg.otel = checked(lambda: parse_otel(data.get("otel"), where.at("otel", None)), None)
    cfg.retention_days = checked(lambda: _retention_days(table("retention"), where), None)
    cfg.bodies = checked(lambda: _body_settings(table("capture"), where), None)
    _raise_all(errors, path)
    return cfg


def _parse_attribution(table: dict[str, Any], path: Path, where: _Locator) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in _KNOWN["attribution"] - {"rules"}:
        out[key] = _get(table, "attribution", key, bool, True, where)
    rules = table.get("rules", [])
    if not isinstance(rules, list):
        raise ConfigError(f"{where.at('attribution', 'rules')}: attribution.rules must be [[attribution.rules]] entries")
    out["rules"] = []
    if rules:  # `status` reads this file: import the bounds only when there are rules to check
        from hm_proto import MAX_TAGS, name_problem, tag_problem
    for n, entry in enumerate(rules, 1):
        label = f"{where.entry('attribution.rules', n, None)}: attribution.rules entry {n}"
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not entry["path"].strip():
            raise ConfigError(f'{label}: needs path = "~/code/acme/**"')
        for key in entry:
            if key not in ("path", "project", "tags"):
                raise ConfigError(f"{label}: unknown key {key} (use path, project, tags)")
        project = entry.get("project")
        if project is not None and (why := name_problem(project)) is not None:
            raise ConfigError(f"{label}: project: {why}")
        tags = entry.get("tags", {})
        if not isinstance(tags, dict) or len(tags) > MAX_TAGS:
            raise ConfigError(f'{label}: tags must be a table like {{ team = "ml" }} of at most {MAX_TAGS} entries')
        for tag_key, tag_value in tags.items():
            if (why := tag_problem(tag_key, tag_value)) is not None:
                raise ConfigError(f"{label}: tags.{tag_key}: {why}")
        out["rules"].append({"path": entry["path"].strip(), "project": project, "tags": dict(tags)})
    return out


_OVERRIDE_KEYS = (
    "model", "provider", "input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok",
)
# Older name → the name to use (genai-prices' own names win).
_OVERRIDE_DEPRECATED = {
    "input_per_mtok": "input_mtok",
    "output_per_mtok": "output_mtok",
    "cache_read_per_mtok": "cache_read_mtok",
    "cache_write_per_mtok": "cache_write_mtok",
}


def _did_you_mean(name: str, known: Any) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _loopback_listen(table: dict[str, Any], section: str, where: _Locator) -> str | None:
    """``listen = "127.0.0.1:PORT"``: loopback only (nothing here is meant for the network)."""
    listen = _get(table, section, "listen", str, "", where).strip()
    if not listen:
        return None
    host, _, port = listen.rpartition(":")
    if host.strip("[]") not in ("127.0.0.1", "::1", "localhost") or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ConfigError(
            f"{where.at(section, 'listen')}: {section}.listen must be a loopback address like "
            f"\"127.0.0.1:9464\", not {listen!r} (scrape it from elsewhere through an SSH tunnel or an agent)"
        )
    return str(listen)


MAX_RETENTION_DAYS = 36_500


def _body_settings(table: dict[str, Any], where: _Locator) -> Any:
    """[capture] bodies / body_max_kib / redact; None when bodies are off (nothing imported)."""
    mode = _get(table, "capture", "bodies", str, "off", where)
    modes = ("off", "local", "sync")
    if mode not in modes:
        raise ConfigError(f"{where.at('capture', 'bodies')}: capture.bodies must be one of {', '.join(modes)}, "
                          f"not {mode!r}{_did_you_mean(mode, modes)}")
    max_kib = _get(table, "capture", "body_max_kib", int, 256, where)
    if not 1 <= max_kib <= 4096:
        raise ConfigError(f"{where.at('capture', 'body_max_kib')}: capture.body_max_kib must be 1-4096, not {max_kib}")
    patterns = table.get("redact", [])
    if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns) or len(patterns) > 50:
        raise ConfigError(f"{where.at('capture', 'redact')}: capture.redact must be a list of at most 50 regexes "
                          f'like ["ACME-[0-9]{{6}}"]')
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ConfigError(f"{where.at('capture', 'redact')}: capture.redact: {pattern!r} is not a regex: {exc}") from None
    if mode == "off":
        return None
    from .bodies import BodySettings

    return BodySettings(mode=mode, max_bytes=max_kib * 1024, redact=tuple(compiled))


def _retention_days(table: dict[str, Any], where: _Locator) -> int | None:
    """``[retention] days``: 1-36500, or absent (keep everything)."""
    days = _get(table, "retention", "days", int, None, where)
    if days is not None and not 1 <= days <= MAX_RETENTION_DAYS:
        raise ConfigError(
            f"{where.at('retention', 'days')}: retention.days must be 1-{MAX_RETENTION_DAYS} days, not {days} "
            f"(remove the line to keep everything)"
        )
    return None if days is None else int(days)


def _get(table: dict[str, Any], section: str, key: str, kind: type, default: Any, where: _Locator) -> Any:
    if key not in table:
        return default
    value = table[key]
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(
            f"{where.at(section, key)}: {section}.{key} must be {_KIND_NAMES[kind]}, not {value!r}"
        )
    return value


_KIND_NAMES = {str: "a quoted string", int: "an integer", bool: "true or false"}


class _Locator:
    """Finds the line a section or key is written on, for error messages."""

    def __init__(self, text: str, path: Path) -> None:
        self.lines = text.splitlines()
        self.path = path

    def at(self, section: str, key: str | None) -> str:
        current = ""
        for number, raw in enumerate(self.lines, 1):
            line = raw.strip()
            header = re.match(r"^\[\[?\s*([^\]]+?)\s*\]\]?", line)
            if header:
                current = header.group(1).split(".")[0].strip().strip('"')
                if key is None and current == section:
                    return f"{self.path}:{number}"
                continue
            if key is not None and current == section and re.match(rf"^\"?{re.escape(key)}\"?\s*=", line):
                return f"{self.path}:{number}"
        return str(self.path)

    def entry(self, array: str, n: int, key: str | None) -> str:
        """The line of ``key`` in the n-th ``[[array]]`` entry (or of its header)."""
        seen = 0
        inside = False
        header_line = 0
        for number, raw in enumerate(self.lines, 1):
            line = raw.strip()
            if line.startswith("["):
                inside = re.match(rf"^\[\[\s*{re.escape(array)}\s*\]\]", line) is not None
                if inside:
                    seen += 1
                    if seen > n:
                        break
                    header_line = number
                continue
            if inside and seen == n and key is not None and re.match(rf"^\"?{re.escape(key)}\"?\s*=", line):
                return f"{self.path}:{number}"
        return f"{self.path}:{header_line}" if seen >= n else str(self.path)


def _describe_syntax_error(text: str, path: Path, exc: tomllib.TOMLDecodeError) -> str:
    message = str(exc)
    match = re.search(r"\(at line (\d+), column (\d+)\)", message)
    reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", message)
    if not match:
        return f"{path}: invalid TOML: {reason}. Fix it, or move it away to get the defaults back."
    line_no = int(match.group(1))
    lines = text.splitlines()
    line = lines[line_no - 1].strip() if 0 < line_no <= len(lines) else ""
    key = line.split("=", 1)[0].strip() if "=" in line else ""
    key_part = f" (key `{key}`)" if key else ""
    return (
        f"{path}:{line_no}{key_part}: invalid TOML: {reason}: `{line}`. "
        f"Fix that line (strings need quotes), or move the file away to get the defaults back."
    )


_UNSET: Any = object()


def update_cloud_config(
    home: Path | HomePaths | None = None,
    *,
    enabled: bool = _UNSET,
    base_url: str | None = _UNSET,
    workspace_id: str | None = _UNSET,
) -> None:
    """Set keys of the [cloud] table, keeping the user's comments and other keys.

    ``None`` removes a key (``base_url=None`` restores the default). The file
    is rewritten atomically with its previous mode (0600 when new).
    """
    import tomlkit  # only the cloud commands pay for this import

    hp = home if isinstance(home, HomePaths) else paths(home)
    try:
        text = read_regular(hp.config).decode("utf-8")
        mode = os.stat(hp.config).st_mode & 0o777
    except FileNotFoundError:
        text, mode = DEFAULT_CONFIG_TEXT, 0o600
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {hp.config}: {exc}. Make it a regular UTF-8 file of at most 1 MiB (or move it away for the defaults).") from None
    parse_config(text, hp.config)  # refuse to rewrite a file we cannot parse
    doc = tomlkit.parse(text)
    if "cloud" not in doc:
        doc.add("cloud", tomlkit.table())
    cloud: Any = doc["cloud"]
    for key, value in (("enabled", enabled), ("base_url", base_url), ("workspace_id", workspace_id)):
        if value is _UNSET:
            continue
        if value is None:
            if key in cloud:
                del cloud[key]
        else:
            cloud[key] = value
    hp.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(hp.config, tomlkit.dumps(doc).encode("utf-8"), mode)
