"""Loss registry: OpenCLIP losses found through the ``open_clip_train.losses`` entry-point group.

Each entry point names a plugin object with:
    add_arguments(parser)   add the loss's own ``--<name>-*`` flags (shown in --help and params.txt)
    validate(args) -> list  problems with the parsed flags, each a sentence naming the fix
    build(args) -> Module   the loss ``create_loss`` returns

Another package adds a loss by declaring, in its own metadata,
``[project.entry-points."open_clip_train.losses"] myloss = "mypkg.module:MyLossPlugin"``.
"""
import functools
from importlib.metadata import entry_points
from typing import List

GROUP = "open_clip_train.losses"
#: The loss used when ``--loss`` is absent: OpenCLIP's own choice (ClipLoss, or SigLIP/CoCa/distill).
DEFAULT_LOSS = "clip"


class LossRegistryError(RuntimeError):
    pass


@functools.lru_cache(maxsize=None)
def _entry_points():
    found = {}
    for ep in entry_points(group=GROUP):
        if ep.name in found and found[ep.name].value != ep.value:
            raise LossRegistryError(
                f"two packages register the loss {ep.name!r} in {GROUP}: "
                f"{found[ep.name].value} and {ep.value}; uninstall one of them")
        found[ep.name] = ep
    return found


def available_losses() -> List[str]:
    return sorted(_entry_points())


@functools.lru_cache(maxsize=None)
def load_plugin(name: str):
    eps = _entry_points()
    if name not in eps:
        raise LossRegistryError(
            f"unknown loss {name!r}; registered losses: {', '.join(available_losses()) or 'none'} "
            f"(entry-point group {GROUP})")
    return eps[name].load()


def add_loss_arguments(parser) -> None:
    """Add ``--loss`` (exact: no abbreviation can reach it) and every registered loss's flags."""
    names = available_losses()
    parser.add_argument(
        "--loss", default=DEFAULT_LOSS, choices=names,
        help=f"Training loss, from the '{GROUP}' entry points: {', '.join(names)} "
             f"(default: {DEFAULT_LOSS}, OpenCLIP's own loss selection).")
    for name in names:
        load_plugin(name).add_arguments(parser)


def validate_loss_args(args) -> List[str]:
    return list(load_plugin(args.loss).validate(args))


def build_loss(args):
    return load_plugin(args.loss).build(args)

