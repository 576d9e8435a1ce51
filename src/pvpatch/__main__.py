"""`python -m pvpatch`: the `pvpatch` command."""
import sys

from .cli import main

sys.exit(main())
