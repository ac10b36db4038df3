"""hm_cloud: the self-hostable Halton Meter Cloud backend (Starlette + SQLAlchemy Core).

Run it with ``halton-meter-cloud serve``; see docs/cloud.md. It implements
docs/api.md and shares only hm_proto's message types and token helpers.
"""
