"""`python -m runtime` is `tweetgen-run`."""

import sys

from .cli import main

sys.exit(main())
