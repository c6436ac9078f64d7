"""X-Sample contrastive loss (X-CLR, Sobal et al., ICLR 2025) as a plugin for OpenCLIP's trainer.

Importing this package is cheap (no torch): it is imported at interpreter start-up by the hook
that makes ``python -m open_clip_train.main --loss xsample`` work.
"""
__version__ = "0.1.0"

#: The OpenCLIP releases whose internals ``patches/`` was written and tested against, as a pip range
#: (3.0.0 through 3.3.x); patches/version.py holds one table of relied-on sources per release in it.
SUPPORTED_OPEN_CLIP = ">=3.0,<3.4"
