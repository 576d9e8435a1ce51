"""python -m pvpatch.cli"""
import sys

from . import main

sys.exit(main())
