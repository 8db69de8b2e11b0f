"""`python -m pipeline` is the `maskmine` command."""

import sys

from .cli import main

sys.exit(main())
