"""Whether the installed OpenCLIP is the one these patches were written for.

Two checks, both cheap and both run only once OpenCLIP itself is being imported or used:
- the release (``open_clip.__version__``; the package metadata only if OpenCLIP is not imported);
- the source of every OpenCLIP function that ``patches/`` re-implements rather than wraps (today
  ``CsvDataset.__init__``, see csv_data.py): a sha256 of its source must be the one the
  re-implementation was written from, so a 3.3.x release that changed it is refused instead of
  silently losing the change.
"""
import hashlib
import inspect
import sys
from typing import List, Optional

from xsample_openclip import SUPPORTED_OPEN_CLIP, __version__

#: sha256 of ``inspect.getsource`` of each re-implemented OpenCLIP function, in open-clip-torch 3.3.0:
#: (module, attribute path) -> hash.
REIMPLEMENTED = {
    ("open_clip_train.data", "CsvDataset.__init__"): "b07db22cecc0013960752bb735f797ffe0faf29d41432ed8fb6b4fa60bbc7e93",
}


def installed_open_clip_version() -> str:
    module = sys.modules.get("open_clip")
    if module is not None and getattr(module, "__version__", None):
        return module.__version__
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("open_clip_torch")
    except PackageNotFoundError:
        return "not installed"


def unsupported_version_message() -> Optional[str]:
    """None if the installed OpenCLIP release is supported, else the refusal text."""
    found = installed_open_clip_version()
    if found.startswith(SUPPORTED_OPEN_CLIP):
        return None
    wanted = " or ".join(f"{v}x" for v in SUPPORTED_OPEN_CLIP)
    return (f"xsample-openclip {__version__} patches OpenCLIP {wanted}, but open-clip-torch {found} is "
            f"installed; install 'open-clip-torch[training]==3.3.0' (pip install -e . pins it) or an "
            f"xsample-openclip release built for {found}")


def source_hash(obj) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()


def resolve(module_name: str, path: str):
    import importlib

    obj = importlib.import_module(module_name)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def changed_sources(reimplemented=None) -> List[str]:
    """Re-implemented functions whose OpenCLIP source is not the one they were written from."""
    changed = []
    for (module_name, path), expected in (reimplemented or REIMPLEMENTED).items():
        try:
            found = source_hash(resolve(module_name, path))
        except (OSError, TypeError, AttributeError, ImportError):
            found = "unavailable"
        if found != expected:
            changed.append(
                f"{module_name}.{path} in open-clip-torch {installed_open_clip_version()} is not the 3.3.0 "
                f"code that xsample-openclip {__version__} re-implements (source sha256 {found[:12]}, "
                f"expected {expected[:12]}); install 'open-clip-torch[training]==3.3.0' or an "
                "xsample-openclip release built for this OpenCLIP")
    return changed
