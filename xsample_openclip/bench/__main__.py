"""``python -m xsample_openclip.bench``: the command line of ``cli.main``."""
from .cli import main

main()
