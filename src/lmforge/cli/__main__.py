"""`python -m lmforge.cli`: the same as the `lmforge` command."""

import sys

from . import main

sys.exit(main())
