"""hm_agent: the Halton Meter daemon (home, store, proxy, supervisor, control socket).

Kept import-free: ``halton-meter status`` imports hm_agent.home/config/control
and must not pay for hm_proto, mitmproxy or anyio. A test checks that this
version matches hm_proto's and pyproject.toml's.
"""

__version__ = "0.2.1"
