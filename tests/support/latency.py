"""Measure an endpoint's latency from a separate process while a test loads the server.

    with latency_probe(f"{cloud.base_url}/v1/whoami", token) as probe:
        ...  # flood the server from this process
    probe.latencies  # seconds, one per request, sent back to back

The probe runs in its own interpreter so the load generator's threads (and
their share of this process's GIL) do not inflate what it measures.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

_PROBE = r"""
import json, sys, threading, time
import httpx
url, token = sys.argv[1], sys.argv[2]
taken, failures = [], []
stop = threading.Event()
def run():
    with httpx.Client(headers={"Authorization": "Bearer " + token}, timeout=30) as http:
        while not stop.is_set():
            started = time.perf_counter()
            status = http.get(url).status_code
            taken.append(time.perf_counter() - started)
            if status != 200:
                failures.append(status)
            time.sleep(0.005)
thread = threading.Thread(target=run)
thread.start()
print("ready", flush=True)
sys.stdin.read()  # until the test closes our stdin
stop.set()
thread.join()
print(json.dumps({"latencies": taken, "failures": failures}), flush=True)
"""


@dataclass
class Probe:
    latencies: list[float] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


@contextmanager
def latency_probe(url: str, token: str, warmup: float = 0.2) -> Iterator[Probe]:
    probe = Probe()
    process = subprocess.Popen(
        [sys.executable, "-c", _PROBE, url, token],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdin is not None
        assert process.stdout.readline().strip() == "ready"
        time.sleep(warmup)
        yield probe
        process.stdin.close()
        result = json.loads(process.stdout.read())
        probe.latencies = result["latencies"]
        probe.failures = result["failures"]
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
