"""`python -m tierd` is the `tierd` command."""
import sys

from tierd.cli import main

sys.exit(main())
