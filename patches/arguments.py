"""Adds ``--loss`` and every registered loss's flags to OpenCLIP's own parser, then checks the flags.

OpenCLIP's ``parse_args`` builds its ``ArgumentParser`` internally; for the duration of that call the
first ``parse_args`` of any parser is intercepted so the plugin flags land on that very parser (one
``--help``, one ``params.txt``) and the result is a ``registry.RunArgs``: the marker that routes
``create_loss`` into the registry, carrying the run's ``LossRun``. ``--loss`` is an exact option, so
``--loss xsample`` can no longer be taken as an abbreviation of ``--loss-dist-impl``. Only checks of
the flags themselves run here, on every rank alike; checks that read files or data run once the
process group exists (startup_checks.py).
"""
import argparse
import contextlib
import functools
import sys

from xsample_openclip import locked_text, registry
from xsample_openclip.model_configs import minilm

from .version import changed_sources, release_refusals, unsupported_version_message


@contextlib.contextmanager
def _plugin_flags_on_next_parser():
    original = argparse.ArgumentParser.parse_args

    def parse_with_plugin_flags(parser, args=None, namespace=None):
        argparse.ArgumentParser.parse_args = original  # one parser only
        registry.add_loss_arguments(parser)
        parsed = original(parser, args, namespace if namespace is not None else registry.RunArgs())
        plugin = registry.load_plugin(parsed.loss)
        problems = list(plugin.validate(parsed)) + locked_text.flag_problems(parsed) + minilm.run_problems(parsed)
        if parsed.loss != registry.DEFAULT_LOSS or locked_text.capacity(parsed):
            problems = changed_sources() + release_refusals(parsed) + problems
        if problems:
            parser.exit(2, f"{parser.prog}: error: " + "\n  ".join(problems) + "\n")
        parsed.loss_run = registry.LossRun(plugin)
        return parsed

    argparse.ArgumentParser.parse_args = parse_with_plugin_flags
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original


def _asks_for_plugin(argv) -> bool:
    return any(a == "--loss" or a.startswith(("--loss=", "--xsample-", registry.ALLOW_CHANGES_FLAG))
               for a in argv)


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
