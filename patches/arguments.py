"""Adds ``--loss`` and every registered loss's flags to OpenCLIP's own parser, then checks them.

OpenCLIP's ``parse_args`` builds its ``ArgumentParser`` internally; for the duration of that call the
first ``parse_args`` of any parser is intercepted so the plugin flags land on that very parser (one
``--help``, one ``params.txt``). ``--loss`` is then an exact option, so ``--loss xsample`` can no
longer be taken as an abbreviation of ``--loss-dist-impl``. After the loss's own checks, ``--resume``
is checked against the run it continues (resume.py).
"""
import argparse
import contextlib
import functools
import sys

from xsample_openclip import registry

from .resume import resume_problems
from .version import unsupported_version_message


@contextlib.contextmanager
def _plugin_flags_on_next_parser():
    original = argparse.ArgumentParser.parse_args

    def parse_with_plugin_flags(parser, args=None, namespace=None):
        argparse.ArgumentParser.parse_args = original  # one parser only
        registry.add_loss_arguments(parser)
        parsed = original(parser, args, namespace)
        problems = registry.validate_loss_args(parsed)
        if not problems:
            problems = resume_problems(parsed)
        if problems:
            parser.exit(2, f"{parser.prog}: error: " + "\n  ".join(problems) + "\n")
        return parsed

    argparse.ArgumentParser.parse_args = parse_with_plugin_flags
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original


def _asks_for_plugin(argv) -> bool:
    return any(a == "--loss" or a.startswith(("--loss=", "--xsample-")) for a in argv)


def wrap_parse_args(stock):
    @functools.wraps(stock)
    def parse_args(args=None):
        argv = sys.argv[1:] if args is None else list(args)
        refusal = unsupported_version_message()
        if refusal is not None:
            if _asks_for_plugin(argv):
                sys.exit(f"error: {refusal}")
            return stock(args)
        with _plugin_flags_on_next_parser():
            return stock(args)

    return parse_args
