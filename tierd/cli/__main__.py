"""`python -m tierd.cli` is the `tierd` command."""
import sys

from tierd.cli import main

sys.exit(main())
