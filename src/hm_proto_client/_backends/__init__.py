"""Byte streams, locks, sleep and the clock for the two clients.

``anyio`` backs the async client (asyncio or trio) and ``sync`` the blocking
one. Both expose the same shape, so ``_sync`` is generated from ``_async``
by ``scripts/unasync.py``. Every stream operation takes a timeout in seconds
and raises TimeoutError when it runs out, OSError when the connection fails.
"""
