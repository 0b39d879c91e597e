"""`python -m sign2text` is the `sign2text` command."""

import sys

from sign2text.cli import main

sys.exit(main())
