"""Hook-free launcher: the console script ``xsample-openclip-train`` (and ``python -m xsample_openclip.launch``)
takes exactly open_clip_train.main's flags.

It patches OpenCLIP explicitly, then runs OpenCLIP's own ``main``, so the plugin is active whether or
not the start-up hook was loaded: it is the fail-closed way to launch (a ``--loss`` the plugin does not
know is refused by the patched parser; it can never fall back to stock OpenCLIP). Use it everywhere, and
in particular where ``.pth`` start-up files are not processed (``pip install --target``/``PYTHONPATH``
installs, unusual site setups), with ``XSAMPLE_OPENCLIP_DISABLE=1``, where another import hook claims
OpenCLIP first, and under torchrun (``torchrun --nproc_per_node N --no-python xsample-openclip-train ...``).
The demo trains every run through it. Without the plugin, ``python -m open_clip_train.main --loss xsample``
silently trains plain CLIP (stock argparse reads ``--loss`` as ``--loss-dist-impl``); check any run with
``grep '^loss:' logs/RUN/params.txt``.
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
