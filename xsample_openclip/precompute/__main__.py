"""``python -m xsample_openclip.precompute``: see the package docstring."""
import sys

from .cli import main

sys.exit(main())
