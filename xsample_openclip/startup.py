"""Run at interpreter start-up by ``xsample_openclip_hook.pth`` (installed into site-packages).

It imports nothing heavy: it only asks to patch OpenCLIP's modules when (and if) they get imported,
so ``python -m open_clip_train.main --loss xsample`` and ``torchrun ... -m open_clip_train.main``
find the plugin, and every other program pays nothing.
"""
from xsample_openclip.patches import register_import_hooks

register_import_hooks()
