"""``python -m hm_cloud`` is ``halton-meter-cloud``."""

import sys

from .cli import main

sys.exit(main())
