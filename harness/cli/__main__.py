"""`python -m harness.cli ...` is `cbs ...`."""

import sys

from harness.cli import main

sys.exit(main())
