"""Hook-free launcher: ``python -m xsample_openclip.launch`` takes exactly open_clip_train.main's flags.

It patches OpenCLIP explicitly, then runs OpenCLIP's own ``main``; use it where ``.pth`` start-up
files are not processed (``python -S``, unusual site setups) or under ``torchrun -m``.
"""
import sys


def main(argv=None):
    from xsample_openclip import patches

    patches.install()
    from open_clip_train import main as openclip_main

    patches.patch_main(openclip_main)
    return openclip_main.main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
