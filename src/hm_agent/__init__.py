"""hm_agent: the Halton Meter daemon (home, store, proxy, supervisor, control socket)."""

from hm_proto import __version__

__all__ = ["__version__"]
