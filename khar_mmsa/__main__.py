"""``python -m khar_mmsa``: see :mod:`khar_mmsa.cli` (heavy imports happen inside the commands)."""
import sys

from khar_mmsa.cli import main

sys.exit(main())
