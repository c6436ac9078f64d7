"""Which OpenCLIP is installed, and whether these patches were written for it."""
from importlib.metadata import PackageNotFoundError, version

from xsample_openclip import SUPPORTED_OPEN_CLIP, __version__


def installed_open_clip_version() -> str:
    try:
        return version("open_clip_torch")
    except PackageNotFoundError:
        return "not installed"


def unsupported_version_message():
    """None if the installed OpenCLIP is supported, else the refusal text."""
    found = installed_open_clip_version()
    if found.startswith(SUPPORTED_OPEN_CLIP):
        return None
    wanted = " or ".join(f"{v}x" for v in SUPPORTED_OPEN_CLIP)
    return (f"xsample-openclip {__version__} patches OpenCLIP {wanted}, but open-clip-torch {found} is "
            f"installed; install 'open-clip-torch[training]==3.3.0' (pip install -e . pins it) or an "
            f"xsample-openclip release built for {found}")
