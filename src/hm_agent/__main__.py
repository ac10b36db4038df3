"""``python -m hm_agent run [--backend asyncio|trio]``: the daemon in the foreground."""

import sys

from .daemon import main

sys.exit(main())
