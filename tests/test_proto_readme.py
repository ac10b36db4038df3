"""proto/README.md's snippets, run in order against a real halton-meter-cloud.

The tutorial cannot drift from the library: each ```python block is a
complete program, run as it is (HM_BASE_URL set, pairing codes approved as
a user would in the browser) in one working directory, so later blocks use
the token file and the rows an earlier one left.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from tests.support.cloudserver import CloudServer
from tests.test_examples import cloud, run_paired  # noqa: F401 (cloud is a fixture)

README = Path(__file__).resolve().parent.parent / "proto" / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_tutorial_has_the_four_calls_and_the_shortest_program_first() -> None:
    assert len(BLOCKS) == 5
    first = BLOCKS[0]
    assert "run_pairing_async" in first and "run_sync_async" in first
    heading = README.read_text().split("```python")[0]
    assert "## The shortest complete program: pair, sync, reconcile" in heading


@pytest.mark.slow
def test_every_snippet_runs_against_a_real_backend(cloud: CloudServer, tmp_path: Path) -> None:  # noqa: F811
    env = {**os.environ, "HM_BASE_URL": cloud.base_url}
    outputs = []
    for n, block in enumerate(BLOCKS):
        script = tmp_path / f"snippet_{n}.py"
        script.write_text(block)
        outputs.append(run_paired([sys.executable, str(script)], cloud, tmp_path, env=env))
    shortest, paired, synced, reconciled, revoked = outputs
    assert "ACTIVE uploaded: 1 reconciled:" in shortest and "reconciled: None" not in shortest
    assert "paired with acme" in paired
    assert "ACTIVE 3 rows synced" in synced
    assert "in sync" in reconciled
    assert "Token revoked." in revoked and not (tmp_path / "token.txt").exists()


@pytest.mark.slow
def test_the_shortest_program_runs_on_trio_too(cloud: CloudServer, tmp_path: Path) -> None:  # noqa: F811
    script = tmp_path / "shortest_trio.py"
    script.write_text(BLOCKS[0].replace("anyio.run(main)", 'anyio.run(main, backend="trio")'))
    out = run_paired([sys.executable, str(script)], cloud, tmp_path,
                     env={**os.environ, "HM_BASE_URL": cloud.base_url})
    assert "ACTIVE uploaded: 1 reconciled:" in out
