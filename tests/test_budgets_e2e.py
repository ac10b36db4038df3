"""Budgets end to end: the official SDKs through a real daemon to the local fake
providers; alerts to a local webhook receiver and a notify-send on PATH."""

from __future__ import annotations

import json
import sqlite3
import ssl
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from .support.daemon import Daemon, capture_host_config, running_daemon, start_daemon, stop_or_kill
from .support.fake_providers import FakeProviders
from .support.receiver import Receiver
from .support.tls import make_ca

pytestmark = pytest.mark.slow

OPENAI_KEY = "sk-proj-budgetSECRET0123456789"
ANTHROPIC_KEY = "sk-ant-api03-budgetSECRET0123456789"


def http(d: Daemon) -> httpx.Client:
    return httpx.Client(proxy=d.proxy_url, verify=ssl.create_default_context(cafile=str(d.ca_cert_path)),
                        timeout=20)


def oai(d: Daemon, upstream: FakeProviders) -> openai.OpenAI:
    # max_retries left at the SDK default: the budget error must not be retried.
    return openai.OpenAI(api_key=OPENAI_KEY, base_url=f"{upstream.base_url}/v1", http_client=http(d))


def claude(d: Daemon, upstream: FakeProviders) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=ANTHROPIC_KEY, base_url=upstream.base_url, http_client=http(d))


def stream_call(d: Daemon, upstream: FakeProviders) -> None:
    chunks = list(oai(d, upstream).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None


def costs(d: Daemon) -> list[str | None]:
    with sqlite3.connect(f"file:{d.db_path}?mode=ro", uri=True) as conn:
        return [r[0] for r in conn.execute("SELECT cost_usd FROM requests ORDER BY rowid")]


def budget_status(d: Daemon) -> list[dict[str, Any]]:
    out = d.cli("budget", "status", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["budgets"]  # type: ignore[no-any-return]


def wait_until(check: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def fake_notify_send(tmp_path: Path) -> tuple[dict[str, str], Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "notifications.log"
    script = bin_dir / "notify-send"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\n')
    script.chmod(0o755)
    import os

    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}, log


def test_streamed_calls_cross_each_threshold_once_and_never_again_after_restart(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    env, notifications = fake_notify_send(tmp_path)
    home = tmp_path / "home"
    with FakeProviders(ca) as upstream, Receiver() as hooks:
        provider = f"localhost:{upstream.port}"
        hosts = capture_host_config([provider])
        webhook = f'[[alerts.webhooks]]\nurl = "{hooks.url("/slack")}"\n'

        def config(limit: str) -> str:
            return (f'{hosts}\n[[budgets]]\nname = "streams-daily"\nperiod = "day"\nlimit_usd = "{limit}"\n'
                    f'scope = {{ provider = "{provider}" }}\n\n{webhook}')

        d = start_daemon(home, upstream_ca=ca.ca_path, extra_config=config("1000"), env=env)
        try:
            stream_call(d, upstream)
            d.wait_rows(1)
            wait_until(lambda: costs(d) and costs(d)[0] is not None)
            cost = Decimal(costs(d)[0] or "0")
            assert cost > 0
            limit = cost * 10  # 50% after call 5, 80% after call 8, 100% after call 10
            (home / "config.toml").write_text(
                (home / "config.toml").read_text().replace('limit_usd = "1000"', f'limit_usd = "{limit}"'))
            assert wait_until(lambda: budget_status(d)[0]["limit_usd"] == format(limit, "f"))
            assert hooks.posts == []
            for n, expect in ((5, 1), (8, 2), (10, 3)):
                while len(costs(d)) < n:
                    stream_call(d, upstream)
                    d.wait_rows(len(costs(d)) + 1)
                assert len(hooks.wait_for(expect)) == expect, f"after {n} calls"
            time.sleep(0.5)
            posts = hooks.posts
            assert [p.json()["threshold"] for p in posts] == [50, 80, 100]
            body = posts[2].json()
            assert body["budget"] == "streams-daily" and body["spend_usd"] == format(limit, "f")
            assert body["text"].startswith("Halton Meter budget streams-daily reached")
            assert body["period_kind"] == "day" and body["scope"] == {"provider": provider}
            view = budget_status(d)[0]
            assert view["fired"] == [50, 80, 100] and view["percent"] == 100.0
            st = d.status()
            assert st["budgets"][0]["fired"] == [50, 80, 100]
            assert "budget       streams-daily" in d.cli("status").stdout
            assert "budget alert: Halton Meter budget streams-daily at 50%" in (home / "daemon.log").read_text()
            assert len(notifications.read_text().splitlines()) == 3
        finally:
            stop_or_kill(d)
        d = start_daemon(home, upstream_ca=ca.ca_path, extra_config=config(format(limit, "f")), env=env)
        try:
            stream_call(d, upstream)
            d.wait_rows(11)
            assert wait_until(lambda: budget_status(d)[0]["percent"] == 110.0)
            time.sleep(1.0)
            assert len(hooks.posts) == 3
        finally:
            stop_or_kill(d)


def test_block_budget_refuses_in_scope_calls_in_each_providers_error_shape(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    with FakeProviders(ca) as upstream, Receiver() as plain:
        budgets = (
            '[[budgets]]\nname = "gpt4o-cap"\nlimit_usd = "0.000001"\naction = "block"\n'
            'scope = { model = "gpt-4o" }\n\n'
            '[[budgets]]\nname = "sonnet-cap"\nperiod = "week"\nlimit_usd = "0.000001"\naction = "block"\n'
            'scope = { model = "claude-sonnet-4-5" }\n\n'
            '[[budgets]]\nname = "flash-cap"\nperiod = "day"\nlimit_usd = "0.000001"\naction = "block"\n'
            'scope = { model = "gemini-2.5-flash" }\n\n'
            '[[budgets]]\nname = "acme-cap"\nlimit_usd = "0.000001"\naction = "block"\n'
            'scope = { project = "acme", tag = "team=ml" }\n'
        )
        with running_daemon(tmp_path / "home", upstream_ca=ca.ca_path,
                            extra_config=capture_host_config([f"localhost:{upstream.port}"]) + budgets) as d:
            client, messages = oai(d, upstream), [{"role": "user", "content": "hi"}]
            # Under the limit: the first call of each goes through and its row exhausts the budget.
            client.chat.completions.create(model="gpt-4o", messages=messages)
            claude(d, upstream).messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=[])
            gemini = f"{upstream.base_url}/v1beta/models/gemini-2.5-flash:generateContent"
            with http(d) as h:
                assert h.post(gemini, json={}).status_code == 200
            d.wait_rows(3)
            assert wait_until(lambda: all(v["blocking"] for v in budget_status(d)[:3]))
            seen = len(upstream.seen)

            with pytest.raises(openai.RateLimitError) as oai_err:
                client.chat.completions.create(model="gpt-4o", messages=messages)
            assert oai_err.value.status_code == 429
            assert oai_err.value.type == "budget_exceeded"
            assert "gpt4o-cap" in oai_err.value.message
            assert "halton-meter budget snooze gpt4o-cap 1h" in oai_err.value.message
            with pytest.raises(anthropic.RateLimitError) as claude_err:
                claude(d, upstream).messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=[])
            assert claude_err.value.body["error"]["type"] == "budget_exceeded"  # type: ignore[index]
            assert "sonnet-cap" in str(claude_err.value)
            with http(d) as h:
                refused = h.post(gemini, json={})
            assert refused.status_code == 429
            assert refused.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
            assert "flash-cap" in refused.json()["error"]["message"]
            assert len(upstream.seen) == seen, "a refused call must not reach the provider (nor be retried)"

            # Out of scope, and non-LLM traffic: untouched.
            client.embeddings.create(model="text-embedding-3-small", input="x")
            claude(d, upstream).messages.create(model="claude-opus-4-1", max_tokens=10, messages=[])
            with http(d) as h:
                assert h.get(plain.url("/anything")).text == "hello"
            assert len(upstream.seen) == seen + 2

            # A project/tag-scoped block: attribution from the override headers.
            acme = {"X-Halton-Project": "acme", "X-Halton-Tags": "team=ml"}
            client.responses.create(model="gpt-4.1", input="x", extra_headers=acme)
            d.wait_rows(6)
            assert wait_until(lambda: [v["blocking"] for v in budget_status(d)][-1])
            with pytest.raises(openai.RateLimitError, match="acme-cap"):
                client.responses.create(model="gpt-4.1", input="x", extra_headers=acme)
            client.responses.create(model="gpt-4.1", input="x", extra_headers={"X-Halton-Project": "other"})

            # A snooze lifts the block; ending it brings the block back.
            out = d.cli("budget", "snooze", "gpt4o-cap", "1h", "--json")
            assert out.returncode == 0, out.stderr
            assert json.loads(out.stdout)["applied"] is True
            client.chat.completions.create(model="gpt-4o", messages=messages)
            assert d.cli("budget", "snooze", "gpt4o-cap", "off").returncode == 0
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(model="gpt-4o", messages=messages)
            rows = d.wait_rows(8)
            assert rows == 8  # refused calls leave no row


def test_a_call_in_flight_when_the_budget_runs_out_finishes(tmp_path: Path) -> None:
    import threading

    ca = make_ca(tmp_path / "ca")
    with FakeProviders(ca) as upstream:
        provider = f"localhost:{upstream.port}"
        budget = (f'[[budgets]]\nname = "cap"\nlimit_usd = "0.000001"\naction = "block"\n'
                  f'scope = {{ provider = "{provider}" }}\n')
        with running_daemon(tmp_path / "home", upstream_ca=ca.ca_path,
                            extra_config=capture_host_config([provider]) + budget) as d:
            client = oai(d, upstream)
            upstream.hold()
            chunks: list[Any] = []
            first = threading.Event()

            def in_flight() -> None:
                stream = client.chat.completions.create(model="gpt-4o-mini", messages=[], stream=True,
                                                        stream_options={"include_usage": True})
                for chunk in stream:
                    chunks.append(chunk)
                    first.set()

            worker = threading.Thread(target=in_flight)
            worker.start()
            assert first.wait(15), "the streamed call never started"
            client.chat.completions.create(model="gpt-4o", messages=[])  # its row spends the budget
            assert wait_until(lambda: budget_status(d)[0]["blocking"])
            upstream.release()
            worker.join(15)
            assert chunks and chunks[-1].usage is not None  # the whole stream arrived
            with pytest.raises(openai.RateLimitError, match="cap"):
                client.chat.completions.create(model="gpt-4o", messages=[])
            assert d.wait_rows(2) == 2


def test_a_websocket_session_in_a_spent_block_budget_is_refused_at_the_handshake(tmp_path: Path) -> None:
    import json as _json

    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from .support.fake_ws import FakeWebSocketUpstream

    ca = make_ca(tmp_path / "ca")
    with FakeWebSocketUpstream(ca) as upstream:
        budget = ('[[budgets]]\nname = "realtime-cap"\nlimit_usd = "0.000001"\naction = "block"\n'
                  'scope = { model = "gpt-realtime" }\n')
        with running_daemon(tmp_path / "home", upstream_ca=ca.ca_path,
                            extra_config=capture_host_config([f"localhost:{upstream.port}"]) + budget) as d:
            trust = ssl.create_default_context(cafile=str(d.ca_cert_path))
            url = f"{upstream.base_url}/v1/realtime?model=gpt-realtime"

            def session() -> Any:
                return connect(url, proxy=d.proxy_url, ssl=trust, open_timeout=20,
                               additional_headers={"Authorization": "Bearer sk-test"})

            with session() as ws:  # under the limit: its response spends the budget
                assert _json.loads(ws.recv(timeout=20))["type"] == "session.created"
                ws.send(_json.dumps({"type": "response.create"}))
                while _json.loads(ws.recv(timeout=20))["type"] != "response.done":
                    pass
            assert wait_until(lambda: budget_status(d)[0]["blocking"])
            with pytest.raises(InvalidStatus) as refused:
                session()
            response = refused.value.response
            assert response.status_code == 429
            body = _json.loads(response.body)
            assert body["error"]["type"] == "budget_exceeded" and "realtime-cap" in body["error"]["message"]
