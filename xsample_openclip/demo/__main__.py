"""``python -m xsample_openclip.demo``: see ``xsample_openclip.demo.cli``."""
import sys

from .cli import main

sys.exit(main())
