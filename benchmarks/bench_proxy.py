"""Proxy overhead: the same keep-alive request sequence direct, through bare mitmdump, and through the daemon.

    python benchmarks/bench_proxy.py [--requests 5000] [--concurrency 4]

Upstream is a local HTTPS server (test CA) answering an OpenAI-shaped JSON
body, in its own process. Each client thread keeps one connection alive and
sends POST /v1/chat/completions; for the daemon the host is configured as an
LLM API, so every request is intercepted, tapped and written to SQLite (the
worst case). Prints p50/p99 latency and req/s per mode, the daemon's overhead
over bare mitmdump, the daemon with attribution on vs off (a second daemon
with ``[attribution] enabled = false``, interleaved), the daemon with
budgets and Prometheus metrics on vs off (a third daemon with three
``[[budgets]]`` and ``[metrics] listen``, scraped every 0.5 s during its
rounds, interleaved), the same run with
db.sqlite write-locked by another process for 2 s, the daemon's RSS, `halton-meter status` wall time, and all
figures as one JSON line. The LAST line is the headline: the daemon against
bare mitmdump (p50 difference, req/s and proxy CPU per request ratios).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.daemon import capture_host_config, free_port, start_daemon, stop_or_kill  # noqa: E402
from tests.support.tls import make_ca  # noqa: E402

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}

UPSTREAM_SCRIPT = """
import sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from tests.support.tls import CertAuthority, LocalTLSServer
d = Path(sys.argv[2])
ca = CertAuthority(d / "ca.pem", d / "server-chain.pem", d / "server-key.pem")
with LocalTLSServer(ca) as srv:
    print(srv.port, flush=True)
    sys.stdin.read()
"""

# An upstream that offers HTTP/2 by ALPN (the test fakes), for the both-legs-HTTP/2 mode.
UPSTREAM_H2_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from tests.support.fake_providers import FakeProviders
from tests.support.tls import CertAuthority
d = Path(sys.argv[2])
ca = CertAuthority(d / "ca.pem", d / "server-chain.pem", d / "server-key.pem")
with FakeProviders(ca, http2=True) as srv:
    print(srv.port, flush=True)
    sys.stdin.read()
"""


def run_load(url: str, n: int, concurrency: int, proxy: str | None, verify: ssl.SSLContext,
             keep: bool = False, http2: bool = False) -> dict[str, Any]:
    latencies: list[float] = []
    lock = threading.Lock()
    errors = [0]
    per_thread = n // concurrency

    def worker() -> None:
        mine: list[float] = []
        with httpx.Client(proxy=proxy, verify=verify, timeout=30, trust_env=False, http2=http2) as client:
            for _ in range(per_thread):
                t0 = time.perf_counter()
                r = client.post(url, json=BODY)
                mine.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors[0] += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        **({"latencies": latencies, "elapsed": elapsed} if keep else {}),
        **summary(latencies, elapsed, errors[0]),
    }


def summary(latencies: list[float], elapsed: float, errors: int) -> dict[str, float]:
    """The figures of one run (or of merged rounds): ``latencies`` sorted, in seconds."""
    return {
        "n": len(latencies),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "max_ms": latencies[-1] * 1000,
        "rps": len(latencies) / elapsed,
        "errors": errors,
    }


def merge(parts: list[dict[str, Any]]) -> dict[str, float]:
    latencies = sorted(x for p in parts for x in p["latencies"])
    return summary(latencies, sum(p["elapsed"] for p in parts), sum(p["errors"] for p in parts))


def fmt(name: str, r: dict[str, float]) -> str:
    return (f"{name:<28} p50 {r['p50_ms']:7.2f} ms   p99 {r['p99_ms']:7.2f} ms   max {r['max_ms']:7.1f} ms"
            f"   {r['rps']:7.0f} req/s   errors {int(r['errors'])}")


def wait_port(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process: load on the machine changes it far less than wall time."""
    if not pid:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


BUDGETS = """
[[budgets]]
name = "monthly"
limit_usd = 1000000

[[budgets]]
name = "daily-gpt4o"
period = "day"
limit_usd = 1000000
scope = { model = "gpt-4o" }
action = "block"

[[budgets]]
name = "weekly-other"
period = "week"
limit_usd = 5
scope = { provider = "anthropic" }
"""


class Scraper:
    """GETs /metrics every 0.5 s on its own thread while started (what Prometheus would do, faster)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.scrapes = 0
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while not self._stop.wait(0.5):
            t0 = time.perf_counter()
            try:
                with opener.open(self.url, timeout=10) as response:
                    response.read()
            except OSError:
                continue  # not serving yet: the next tick
            self.times.append((time.perf_counter() - t0) * 1000)
            self.scrapes += 1

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)

    def median_ms(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per mode")
    args = parser.parse_args()
    n, c = args.requests, args.concurrency

    tmp = Path(tempfile.mkdtemp(prefix="hm-bench-"))
    procs: list[subprocess.Popen[str]] = []
    daemon = daemon_off = daemon_budgets = daemon_bodies = None
    try:
        ca = make_ca(tmp / "ca")
        upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM_SCRIPT, str(ROOT), str(tmp / "ca")],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(upstream)
        assert upstream.stdout is not None
        up_port = int(upstream.stdout.readline())
        url = f"https://localhost:{up_port}/v1/chat/completions"
        upstream_h2 = subprocess.Popen([sys.executable, "-c", UPSTREAM_H2_SCRIPT, str(ROOT), str(tmp / "ca")],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(upstream_h2)
        assert upstream_h2.stdout is not None
        h2_port = int(upstream_h2.stdout.readline())
        url_h2 = f"https://localhost:{h2_port}/v1/chat/completions"
        print(f"{n} requests, {c} concurrent keep-alive connections, upstream https://localhost:{up_port} (own process)\n")
        results: dict[str, dict[str, float]] = {}
        direct_ctx = ssl.create_default_context(cafile=str(ca.ca_path))

        # bare mitmdump (buffers responses, intercepts everything)
        mitm_port = free_port()
        confdir = tmp / "mitmdump"
        mitmdump = shutil.which("mitmdump", path=str(Path(sys.executable).parent)) or "mitmdump"
        md = subprocess.Popen([mitmdump, "-q", "--listen-host", "127.0.0.1", "--listen-port", str(mitm_port),
                               "--set", f"confdir={confdir}", "--set", f"ssl_verify_upstream_trusted_ca={ca.ca_path}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        procs.append(md)
        wait_port(mitm_port)
        md_ctx = ssl.create_default_context(cafile=str(confdir / "mitmproxy-ca-cert.pem"))

        # the daemon, metering every request (the host is configured as an LLM API)
        home = tmp / "home"
        daemon = start_daemon(home, "asyncio", upstream_ca=ca.ca_path, tick_seconds=15,
                              extra_config=capture_host_config([f"localhost:{up_port}", f"localhost:{h2_port}"]))
        d_ctx = ssl.create_default_context(cafile=str(daemon.ca_cert_path))
        # the same daemon with [attribution] enabled = false: what finding the caller costs
        daemon_off = start_daemon(tmp / "home-noattr", "asyncio", upstream_ca=ca.ca_path, tick_seconds=15,
                                  extra_config=capture_host_config([f"localhost:{up_port}"])
                                  + "[attribution]\nenabled = false\n")
        off_ctx = ssl.create_default_context(cafile=str(daemon_off.ca_cert_path))
        # the daemon with budgets and /metrics on: what counting spend and serving metrics cost
        metrics_port = free_port()
        daemon_budgets = start_daemon(tmp / "home-budgets", "asyncio", upstream_ca=ca.ca_path, tick_seconds=15,
                                      extra_config=capture_host_config([f"localhost:{up_port}"]) + BUDGETS
                                      + f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')
        budgets_ctx = ssl.create_default_context(cafile=str(daemon_budgets.ca_cert_path))
        scraper = Scraper(f"http://127.0.0.1:{metrics_port}/metrics")
        # the daemon keeping request and response bodies ([capture] bodies = "local", encrypted)
        daemon_bodies = start_daemon(tmp / "home-bodies", "asyncio", upstream_ca=ca.ca_path, tick_seconds=15,
                                     extra_config=capture_host_config([f"localhost:{up_port}"])
                                     + '[capture]\nbodies = "local"\n')
        bodies_ctx = ssl.create_default_context(cafile=str(daemon_bodies.ca_cert_path))

        modes = {
            "direct": (None, direct_ctx),
            "mitmdump": (f"http://127.0.0.1:{mitm_port}", md_ctx),
            "daemon": (daemon.proxy_url, d_ctx),
            "daemon_noattr": (daemon_off.proxy_url, off_ctx),
            "daemon_budgets": (daemon_budgets.proxy_url, budgets_ctx),
            "daemon_bodies": (daemon_bodies.proxy_url, bodies_ctx),
            # HTTP/2 on both legs: an h2 client through the daemon to an upstream that offers h2,
            # against HTTP/1.1 on both legs to that same upstream
            "daemon_h1_h2up": (daemon.proxy_url, d_ctx),
            "daemon_h2": (daemon.proxy_url, d_ctx),
        }
        mode_url = {"daemon_h1_h2up": url_h2, "daemon_h2": url_h2}
        mode_h2 = {"daemon_h2"}
        proxy_pids = {"direct": None, "mitmdump": md.pid, "daemon": daemon.pid, "daemon_noattr": daemon_off.pid,
                      "daemon_budgets": daemon_budgets.pid, "daemon_bodies": daemon_bodies.pid, "daemon_h1_h2up": daemon.pid, "daemon_h2": daemon.pid}
        cpu_used = dict.fromkeys(modes, 0.0)
        for name, (proxy, ctx) in modes.items():
            run_load(mode_url.get(name, url), args.warmup, c, proxy, ctx, http2=name in mode_h2)
        # Interleaved rounds: load from other processes on the machine hits every mode alike.
        rounds = max(1, args.rounds)
        per_round = max(c, n // rounds // c * c)
        parts: dict[str, list[dict[str, float]]] = {name: [] for name in modes}
        for _ in range(rounds):
            for name, (proxy, ctx) in modes.items():
                before = cpu_seconds(proxy_pids[name])
                if name == "daemon_budgets":
                    scraper.start()
                parts[name].append(run_load(mode_url.get(name, url), per_round, c, proxy, ctx, keep=True,
                                            http2=name in mode_h2))
                if name == "daemon_budgets":
                    scraper.stop()
                cpu_used[name] += cpu_seconds(proxy_pids[name]) - before
        labels = {"direct": "direct", "mitmdump": "bare mitmdump", "daemon": "daemon (metering)",
                  "daemon_noattr": "daemon, attribution off", "daemon_budgets": "daemon + budgets + /metrics",
                  "daemon_bodies": "daemon, bodies kept (local)",
                  "daemon_h1_h2up": "daemon, HTTP/1.1 both legs", "daemon_h2": "daemon, HTTP/2 both legs"}
        for name in modes:
            results[name] = merge(parts[name])
            results[name]["proxy_cpu_ms_per_req"] = cpu_used[name] * 1000 / results[name]["n"]
            cpu_note = f"   proxy CPU {results[name]['proxy_cpu_ms_per_req']:.3f} ms/req" if proxy_pids[name] else ""
            print(fmt(labels[name], results[name]) + cpu_note)
        md.terminate()
        md.wait(10)
        attribution = daemon.status().get("attribution") or {}
        stop_or_kill(daemon_off)
        daemon_off = None
        budget_view = (daemon_budgets.status().get("budgets") or [{}])[0]
        stop_or_kill(daemon_budgets)
        daemon_budgets = None
        stop_or_kill(daemon_bodies)
        daemon_bodies = None
        n = per_round * rounds
        expected = (args.warmup // c * c + n) * 3  # daemon, daemon_h1_h2up and daemon_h2 share one daemon
        written = daemon.wait_rows(expected, timeout=30)

        # 4. the daemon while another process holds the database write lock for 2 s
        locker = subprocess.Popen(
            [sys.executable, "-c",
             "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1], isolation_level=None); "
             "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(2); c.execute('ROLLBACK')",
             str(daemon.db_path)], stdout=subprocess.PIPE, text=True)
        procs.append(locker)
        assert locker.stdout is not None
        locker.stdout.readline()
        t_lock = time.perf_counter()
        locked_n = max(c, min(n, int(results["daemon"]["rps"] * 1.8)) // c * c)  # finish inside the lock
        results["locked"] = run_load(url, locked_n, c, daemon.proxy_url, d_ctx)
        inside = time.perf_counter() - t_lock
        print(fmt("daemon, DB locked 2 s", results["locked"]) + f"   ({locked_n} requests in {inside:.2f}s)")
        locker.wait(10)
        written_after = daemon.wait_rows(expected + locked_n, timeout=30)
        pid = daemon.pid
        rss = rss_mb(pid) if pid else float("nan")

        # 5. status wall time
        script = shutil.which("halton-meter", path=str(Path(sys.executable).parent)) or "halton-meter"

        def wall_ms(cmd: list[str]) -> float:
            times = []
            for _ in range(10):
                t0 = time.perf_counter()
                subprocess.run(cmd, env=daemon.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                times.append((time.perf_counter() - t0) * 1000)
            return statistics.median(times)

        python_ms = wall_ms([sys.executable, "-c", "pass"])
        status_ms = wall_ms([script, "status"])

        d, m, direct = results["daemon"], results["mitmdump"], results["direct"]
        print()
        print(f"proxy CPU per request: daemon {d['proxy_cpu_ms_per_req']:.3f} ms vs mitmdump "
              f"{m['proxy_cpu_ms_per_req']:.3f} ms ({100 * (d['proxy_cpu_ms_per_req'] / m['proxy_cpu_ms_per_req'] - 1):+.1f} %)")
        print(f"mitmdump over direct: p50 {m['p50_ms'] - direct['p50_ms']:+.2f} ms, req/s x{m['rps'] / direct['rps']:.2f}")
        print(f"DB locked 2 s: p50 {results['locked']['p50_ms']:.2f} ms (x{results['locked']['p50_ms'] / d['p50_ms']:.2f} of unlocked), "
              f"p99 {results['locked']['p99_ms']:.2f} ms, max {results['locked']['max_ms']:.1f} ms; "
              f"rows written {written} then {written_after} of {expected + locked_n} (none lost)")
        print(f"daemon RSS after {expected + locked_n} metered requests: {rss:.1f} MiB")
        print(f"`halton-meter status` wall time (median of 10): {status_ms:.0f} ms (aim < 150 ms); "
              f"a bare `python -c pass` in the same run: {python_ms:.0f} ms")
        off = results["daemon_noattr"]
        print(f"attribution on vs off (same run, interleaved): p50 {d['p50_ms'] - off['p50_ms']:+.3f} ms "
              f"(limit +0.2 ms), req/s x{d['rps'] / off['rps']:.3f}, CPU/request "
              f"{d['proxy_cpu_ms_per_req'] - off['proxy_cpu_ms_per_req']:+.3f} ms; connections resolved "
              f"{attribution.get('resolved')}, unresolved {attribution.get('unresolved')}, "
              f"slowest resolution {attribution.get('slowest_ms')} ms (on the resolver thread, never the proxy's)")
        on = results["daemon_budgets"]
        print(f"budgets + metrics on vs off (same run, interleaved): p50 {on['p50_ms'] - d['p50_ms']:+.3f} ms, "
              f"p99 {on['p99_ms'] - d['p99_ms']:+.3f} ms, req/s x{on['rps'] / d['rps']:.3f}, CPU/request "
              f"{on['proxy_cpu_ms_per_req'] - d['proxy_cpu_ms_per_req']:+.3f} ms; {scraper.scrapes} scrapes of "
              f"/metrics (median {scraper.median_ms():.1f} ms); budget {budget_view.get('name')} counted "
              f"{budget_view.get('priced_calls')} calls")
        kept = results["daemon_bodies"]
        print(f"bodies local vs off (same run, interleaved): p50 {kept['p50_ms'] - d['p50_ms']:+.3f} ms, "
              f"p99 {kept['p99_ms'] - d['p99_ms']:+.3f} ms, req/s x{kept['rps'] / d['rps']:.3f}, CPU/request "
              f"{kept['proxy_cpu_ms_per_req'] - d['proxy_cpu_ms_per_req']:+.3f} ms (the proxy keeps references;"
              " the writer redacts and encrypts)")
        h2, h1 = results["daemon_h2"], results["daemon_h1_h2up"]
        print(f"HTTP/2 on both legs vs HTTP/1.1 (same daemon and upstream, interleaved): p50 "
              f"{h2['p50_ms'] - h1['p50_ms']:+.3f} ms, p99 {h2['p99_ms'] - h1['p99_ms']:+.3f} ms, "
              f"req/s x{h2['rps'] / h1['rps']:.3f}")
        print(json.dumps({k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in results.items()}))
        print(f"daemon vs bare mitmdump: p50 {d['p50_ms'] - m['p50_ms']:+.2f} ms, req/s x{d['rps'] / m['rps']:.2f}, "
              f"CPU/request x{d['proxy_cpu_ms_per_req'] / m['proxy_cpu_ms_per_req']:.2f}"
              "   (aim: p50 <= +0.3 ms, req/s >= x0.95)")
    finally:
        for running in (daemon, daemon_off, daemon_budgets, daemon_bodies):
            if running is not None:
                stop_or_kill(running)
        for p in procs:
            if p.poll() is None:
                if p.stdin:
                    p.stdin.close()
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.pop("HTTPS_PROXY", None)
    main()
