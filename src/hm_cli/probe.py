"""doctor's client checks: which programs on this machine would bypass the meter.

- `client_checks` (always, no network): the Node version on PATH and what makes
  its fetch use the proxy; loopback capture hosts that NO_PROXY still sends direct.
- `probe_checks` (`doctor --probe`): each runtime found here (Python's urllib,
  curl, Node's fetch) fetches https://probe.halton-meter.invalid/ with this
  shell's environment. The daemon answers that reserved name itself (the
  `.invalid` name resolves nowhere), so an answer proves the program went
  through the proxy and trusted its CA; a direct attempt fails to resolve.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .doctor import Check

PROBE_HOST = "probe.halton-meter.invalid"  # keep in sync with hm_agent.addon.PROBE_HOST
PROBE_URL = f"https://{PROBE_HOST}/"
PROBE_BODY = "halton-meter probe ok"
_ENV_FIX = 'eval "$(halton-meter env)" in this shell'


def node_version() -> tuple[int, int, int] | None:
    node = shutil.which("node")
    if node is None:
        return None
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.match(r"v(\d+)\.(\d+)\.(\d+)", out.strip())
    return (int(match.group(1)), int(match.group(2)), int(match.group(3))) if match else None


def node_honours_env_proxy(version: tuple[int, int, int]) -> bool:
    """Node 24+ (and 22.21+) route fetch through HTTPS_PROXY when NODE_USE_ENV_PROXY=1."""
    major, minor, _ = version
    return major >= 24 or (major == 22 and minor >= 21)


def client_checks(home: Any, capture_hosts: list[tuple[str, str]]) -> list[Check]:
    from hm_agent.home import paths
    from hm_agent.nodepreload import node_preload_path

    from .envcmd import metered_loopback, no_proxy_value

    checks = []
    version = node_version()
    if version is None:
        checks.append(Check("node", None, "not on PATH"))
    else:
        shown = "v" + ".".join(map(str, version))
        preload = str(node_preload_path(paths(home)))
        options = os.environ.get("NODE_OPTIONS", "")
        if node_honours_env_proxy(version):
            ok = os.environ.get("NODE_USE_ENV_PROXY") == "1"
            checks.append(Check("node", ok, f"{shown}: fetch uses the proxy with NODE_USE_ENV_PROXY=1"
                                + ("" if ok else " (not set in this shell)"), _ENV_FIX))
        else:
            ok = preload in options
            checks.append(Check(
                "node", ok, f"{shown} ignores HTTPS_PROXY; its fetch is routed by the NODE_OPTIONS preload "
                f"{preload}" + ("" if ok else ", which this shell does not load"), _ENV_FIX))
    metered = metered_loopback(capture_hosts)
    if metered:
        shell = os.environ.get("NO_PROXY", os.environ.get("no_proxy"))
        wanted = no_proxy_value(None, metered)
        direct = [name for name in metered if shell is not None and name in re.split(r"[\s,]+", shell)]
        proxied = bool(os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"))
        checks.append(Check(
            "loopback hosts", not direct if proxied or direct else None,
            f"capture hosts on {', '.join(metered)}: "
            + (f"NO_PROXY sends {', '.join(direct)} direct, so they are NOT metered" if direct
               else "not in NO_PROXY, so they are metered"),
            f"{_ENV_FIX} (it sets NO_PROXY={wanted})"))
    return checks


_PYTHON = ("import urllib.request, sys\n"
           "print(urllib.request.urlopen(sys.argv[1], timeout=15).read().decode())\n")
_NODE = "fetch(process.argv[1]).then(r => r.text()).then(t => console.log(t), e => { console.error(String(e.cause || e)); process.exit(1) })"


def _runtimes() -> list[tuple[str, list[str], str]]:
    """(name, command, what it stands for) for each runtime found on this machine."""
    found = [("python", [sys.executable, "-c", _PYTHON, PROBE_URL],
              "urllib here; requests, httpx and the openai/anthropic/google-genai SDKs read the same variables")]
    curl = shutil.which("curl")
    if curl:
        found.append(("curl", [curl, "-sS", "--max-time", "15", PROBE_URL], "curl and shell scripts"))
    node = shutil.which("node")
    if node:
        found.append(("node", [node, "-e", _NODE, PROBE_URL],
                      "fetch, and the openai, @anthropic-ai/sdk and @google/genai npm SDKs"))
    return found


def _run_probe(name: str, command: list[str], covers: str) -> Check:
    try:
        res = subprocess.run(command, capture_output=True, text=True, timeout=30, env=os.environ.copy())
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check(f"probe {name}", False, f"did not finish: {exc}", _ENV_FIX)
    if PROBE_BODY in res.stdout:
        return Check(f"probe {name}", True, f"went through the meter ({covers})")
    error = " ".join((res.stderr or res.stdout).split())[-160:]
    if re.search(r"resolve|getaddrinfo|Name or service|ENOTFOUND|nodename|EAI_", error, re.I):
        why = "went direct, bypassing the meter (no proxy variables in effect)"
    elif re.search(r"certificate|CERT|SSL|TLS", error):
        why = "reached the meter but does not trust its CA"
    else:
        why = f"failed: {error or 'no output'}"
    return Check(f"probe {name}", False, why, _ENV_FIX)


def probe_checks() -> list[Check]:
    runtimes = _runtimes()
    with ThreadPoolExecutor(max_workers=len(runtimes)) as pool:
        checks = list(pool.map(lambda r: _run_probe(*r), runtimes))
    checks.append(Check("aiohttp", None, "ignores the proxy variables unless ClientSession(trust_env=True) "
                                         "(docs/clients.md)"))
    return checks
