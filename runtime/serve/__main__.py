"""`python -m tweetgen.serve` is `tweetgen-serve`."""

import sys

from .app import main

sys.exit(main())
