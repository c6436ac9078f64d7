"""``python -m xsample_openclip.model_configs FOLDER``: write the package's model configs as JSON files.

Stock OpenCLIP (the plugin's start-up hook off, ``XSAMPLE_OPENCLIP_DISABLE=1``, or another environment
with the same packages) then knows every ``xs-*`` name after ``open_clip.add_model_config(FOLDER)``, e.g.
``open_clip.create_model_and_transforms("xs-tiny-vit-64-minilm", pretrained="RUN/checkpoints/epoch_12.pt")``.
The MiniLM configs name the installed all-MiniLM-L6-v2 folder by its absolute path: write them again
after moving or reinstalling the environment.
"""
import argparse
import sys

from . import write


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m xsample_openclip.model_configs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="where to write NAME.json for every config (created if missing)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    for path in write(args.folder):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
