"""X-Sample contrastive loss (X-CLR, Sobal et al., ICLR 2025) as a plugin for OpenCLIP's trainer.

Importing this package is cheap (no torch): it is imported at interpreter start-up by the hook
that makes ``python -m open_clip_train.main --loss xsample`` work.
"""
__version__ = "0.1.0"

#: OpenCLIP releases whose internals ``patches/`` was written and tested against.
SUPPORTED_OPEN_CLIP = ("3.3.",)
