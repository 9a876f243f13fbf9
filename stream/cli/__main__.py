"""``python -m stream.cli``: the same as ``l2g-stream``."""

import sys

from stream.cli import main

sys.exit(main())
