"""The loss registry and its plugin contract: what a loss plugin provides, and what the loop offers it.

Losses are found through the ``open_clip_train.losses`` entry-point group. Another package adds one by
declaring, in its own metadata, ``[project.entry-points."open_clip_train.losses"] myloss =
"mypkg.module:MyLossPlugin"`` (a class, instantiated once, or an instance). The contract is written as
typed Protocols, in the way pluggy writes hook specifications:

``LossPlugin`` (the entry point):
    name, flag_groups                   its flags, in groups that several plugins may share
    validate(args) -> [problem]         checks of the parsed flags alone, on every rank, at parsing
                                        (first it may set a shared flag left at None to its own
                                        default, so params.txt and the resume check see a number)
    startup(args, resumed) -> StartupResult
                                        file and data checks, run once on rank 0 after the process group
                                        exists and before the log folder is made (``resumed``: the
                                        params.txt of the run ``--resume`` continues, or None, or
                                        {PREVIOUS_RUN_UNKNOWN: why} when it cannot be found); every
                                        rank receives the result, so all stop together or all go on
    kept_on_resume(args) -> [name]      its settings that ``--resume`` must keep (checked against the
                                        run's params.txt)
    build(args) -> module               the loss ``create_loss`` returns

``PluginLoss`` (what ``build`` returns, when it wants more than OpenCLIP's model outputs):
    needs_batch_tokens                  True: the loop adds the batch's token ids to the model output
                                        under ``BATCH_TOKENS``: the loader's CPU tensor (never a device
                                        copy, so reading it never waits for the device), concatenated
                                        like every feature under ``--accum-freq``
    begin_epoch(epoch, args)            called on every rank before an epoch's first step (per-epoch
                                        settings, e.g. the X-Sample hard-target schedule; a resumed run
                                        gets its own epoch's)
    end_epoch(epoch, args)              called on every rank when an epoch's steps are done (may use
                                        collectives; log on rank 0)
    single_process()                    an equivalent loss for one process, used for the training
                                        objective on validation data (evaluated on rank 0 alone)

The stock ``clip`` entry (OpenCLIP's own loss selection) is a plugin like any other.
"""
import argparse
import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Protocol, Sequence, runtime_checkable

from .locked_text import LOCKED_TEXT_FLAGS

GROUP = "open_clip_train.losses"
#: The loss used when ``--loss`` is absent: OpenCLIP's own choice (ClipLoss, or SigLIP/CoCa/distill).
DEFAULT_LOSS = "clip"
#: Model-output key under which the loop hands a ``PluginLoss`` the batch's token ids (a CPU tensor).
BATCH_TOKENS = "batch_tokens"
#: The flag that lets ``--resume`` continue a run with other loss settings.
ALLOW_CHANGES_FLAG = "--resume-allow-loss-changes"
#: The only key of the ``resumed`` dict a plugin's ``startup`` gets when ``--resume`` loads a checkpoint whose
#: run's params.txt cannot be found (outside ``<run>/checkpoints``, ``--remote-sync``): its value says why.
PREVIOUS_RUN_UNKNOWN = "previous_run_unknown"


class LossRegistryError(RuntimeError):
    pass


@dataclass
class StartupResult:
    """What a plugin's start-up checks found (computed on rank 0, handed to every rank)."""

    problems: List[str] = field(default_factory=list)   # each a refusal that names the fix
    updates: Dict[str, Any] = field(default_factory=dict)  # settings chosen at start-up, e.g. a calibrated
    #                                                       tau_s: set on every rank, so params.txt records them
    notes: List[str] = field(default_factory=list)      # lines for out.log once logging is set up

    def extend(self, other: "StartupResult") -> "StartupResult":
        self.problems += other.problems
        self.updates.update(other.updates)
        self.notes += other.notes
        return self


class FlagGroup(Protocol):
    """A group of command-line flags; groups with the same ``title`` are added to a parser once."""

    title: str

    def add_to(self, parser: argparse.ArgumentParser) -> None: ...


@runtime_checkable
class LossPlugin(Protocol):
    name: str
    flag_groups: Sequence[FlagGroup]

    def validate(self, args: argparse.Namespace) -> List[str]: ...

    def startup(self, args: argparse.Namespace, resumed: Optional[Dict[str, str]]) -> StartupResult: ...

    def kept_on_resume(self, args: argparse.Namespace) -> Iterable[str]: ...

    def build(self, args: argparse.Namespace) -> Any: ...


@runtime_checkable
class PluginLoss(Protocol):
    needs_batch_tokens: bool

    def begin_epoch(self, epoch: int, args: argparse.Namespace) -> None: ...

    def end_epoch(self, epoch: int, args: argparse.Namespace) -> None: ...

    def single_process(self) -> Any: ...


PLUGIN_LOSS_MEMBERS = ("needs_batch_tokens", "begin_epoch", "end_epoch", "single_process")


def check_built_loss(loss, name: str) -> None:
    """Refuse a loss that implements part of ``PluginLoss``: the loop would treat it as a stock loss
    (no token ids, no epoch hooks) without a word."""
    present = [m for m in PLUGIN_LOSS_MEMBERS if hasattr(loss, m)]
    if present and len(present) < len(PLUGIN_LOSS_MEMBERS):
        missing = [m for m in PLUGIN_LOSS_MEMBERS if m not in present]
        raise LossRegistryError(
            f"the loss built by --loss {name} ({type(loss).__name__}) implements part of registry.PluginLoss "
            f"({', '.join(present)}) but not {', '.join(missing)}: add them (begin_epoch/end_epoch may do "
            "nothing), or none of them for a loss that needs nothing from the loop")


@dataclass
class LossRun:
    """The plugin of one training run and what it told the loop so far (lives on ``RunArgs``)."""

    plugin: LossPlugin
    notes: List[str] = field(default_factory=list)
    loss: Optional[Any] = None
    loop_state: Dict[str, Any] = field(default_factory=dict)  # what the patched loop keeps across epochs

    def log_notes(self) -> None:
        while self.notes:
            logging.info(self.notes.pop(0))


class RunArgs(argparse.Namespace):
    """The namespace the patched parser returns. Its type marks arguments parsed with ``--loss`` (only
    these are routed into the registry); ``loss_run`` is a slot, so it is not in ``vars(args)`` and
    params.txt holds flags only."""

    __slots__ = ("loss_run",)


def loss_run(args) -> Optional[LossRun]:
    """The run's ``LossRun`` if ``args`` came from the patched parser, else None (stock behaviour)."""
    return getattr(args, "loss_run", None) if isinstance(args, RunArgs) else None


# --- discovery -------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _entry_points():
    from importlib.metadata import entry_points

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
def load_plugin(name: str) -> LossPlugin:
    eps = _entry_points()
    if name not in eps:
        raise LossRegistryError(
            f"unknown loss {name!r}; registered losses: {', '.join(available_losses()) or 'none'} "
            f"(entry-point group {GROUP})")
    plugin = eps[name].load()
    plugin = plugin() if isinstance(plugin, type) else plugin
    if not isinstance(plugin, LossPlugin):
        raise LossRegistryError(f"the entry point {name!r} ({eps[name].value}) does not provide the "
                                f"LossPlugin contract of xsample_openclip.registry")
    return plugin


def add_loss_arguments(parser: argparse.ArgumentParser) -> None:
    """``--loss`` (exact: no abbreviation can reach it), the resume override, every plugin's flags."""
    names = available_losses()
    parser.add_argument(
        "--loss", default=DEFAULT_LOSS, choices=names,
        help=f"Training loss, from the '{GROUP}' entry points: {', '.join(names)} "
             f"(default: {DEFAULT_LOSS}, OpenCLIP's own loss selection).")
    parser.add_argument(
        ALLOW_CHANGES_FLAG, action="store_true",
        help="Let --resume continue a run with another --loss or other loss settings than its params.txt "
             "records (refused otherwise); the changes are logged.")
    LOCKED_TEXT_FLAGS.add_to(parser)  # a run-wide flag: any loss, --loss clip included
    seen = set()
    for name in names:
        for group in load_plugin(name).flag_groups:
            if group.title not in seen:
                seen.add(group.title)
                group.add_to(parser)


# --- the stock loss as a plugin -------------------------------------------------------------------

class ClipLossPlugin:
    """Entry point ``clip``: OpenCLIP 3.3.0's own ``create_loss`` (ClipLoss, or SigLIP/CoCa/distillation
    from their own flags), unchanged; it is configured by OpenCLIP's flags."""

    name = "clip"
    flag_groups: Sequence[FlagGroup] = ()

    def validate(self, args) -> List[str]:
        views = getattr(args, "xsample_views", 1)
        if views != 1:  # OpenCLIP's losses pair one image with one text
            return [f"--xsample-views {views} needs a loss that takes two views per image: --loss xclr "
                    "(image-image X-CLR) or --loss xsample; drop it for --loss clip"]
        return []

    def startup(self, args, resumed=None) -> StartupResult:
        return StartupResult()

    def kept_on_resume(self, args) -> Iterable[str]:
        return ()

    def build(self, args):
        import inspect

        from open_clip import factory

        loss = inspect.unwrap(factory.create_loss)(args)  # the stock function under any patch
        logging.info(f"Loss: clip (OpenCLIP's own selection): {type(loss).__name__}")
        return loss
