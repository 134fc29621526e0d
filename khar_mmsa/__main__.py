"""``python -m khar_mmsa``: see :mod:`khar_mmsa.cli`."""
import sys

from .cli import main

sys.exit(main())
