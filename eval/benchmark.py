"""Run one clip_benchmark 1.6.2 evaluation in this process, exactly as its CLI would.

In-process (rather than a subprocess) so the package's model configs registered here are visible to
clip_benchmark, and imports are paid once. The argument list is the CLI's own, parsed by its own parser.
"""
import json
import logging
import sys
from contextlib import contextmanager

log = logging.getLogger(__name__)


def device_and_amp(amp=None):
    """clip_benchmark uses CUDA when present; amp defaults to on there and off (fp32) on CPU."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, (device == "cuda") if amp is None else bool(amp)


def _template_safe(text):
    """clip_benchmark calls str.format on --output and --dataset_root; keep literal braces literal."""
    return str(text).replace("{", "{{").replace("}", "}}")


def clip_benchmark_argv(*, model, pretrained, dataset, root, task, output, batch_size, num_workers, amp,
                        classnames_file=None, feature_root=None, save_clf=None, load_clf=None,
                        recall_k=(1, 5, 10)):
    """The ``clip_benchmark eval`` arguments for one (model, dataset, task)."""
    argv = ["eval", "--dataset", dataset, "--dataset_root", _template_safe(root), "--task", task,
            "--model", model, "--pretrained", pretrained, "--model_type", "open_clip",
            "--output", _template_safe(output), "--batch_size", str(batch_size),
            "--num_workers", str(num_workers), "--skip_existing", "--quiet",
            "--recall_k", *[str(k) for k in recall_k]]
    if not amp:
        argv.append("--no_amp")
    if classnames_file:
        # --dump_classnames records them in the JSON (for IN-9 its "dataset" only says imagenet1k-unverified)
        argv += ["--custom_classname_file", classnames_file, "--dump_classnames"]
    if feature_root:
        argv += ["--feature_root", feature_root]
    if save_clf:
        argv += ["--save_clf", save_clf]
    if load_clf:
        argv += ["--load_clfs", load_clf]
    return argv


@contextmanager
def _argv(args):
    saved = sys.argv
    sys.argv = ["clip_benchmark", *args]
    try:
        yield
    finally:
        sys.argv = saved


#: clip_benchmark's modules that draw a tqdm bar per call (per batch loop, per class list), by the name
#: ``tqdm`` they import it under.
BAR_MODULES = ("clip_benchmark.metrics.zeroshot_classification", "clip_benchmark.metrics.zeroshot_retrieval",
               "clip_benchmark.metrics.linear_probe")


@contextmanager
def package_progress_bars():
    """clip_benchmark's own bars drawn by the package's ``progress_bar`` for the duration: on a terminal
    tqdm as before; written to a file (a redirected demo or ``eval.compare``), a line a minute instead of a
    redraw per batch, which filled a 5-seed study's log with thousands of bar lines. Only the progress
    display changes; a module without a ``tqdm`` name (another clip_benchmark release) keeps its own."""
    import importlib

    from xsample_openclip.progress import progress_bar

    swapped = []
    for name in BAR_MODULES:
        module = importlib.import_module(name)
        if hasattr(module, "tqdm"):
            swapped.append((module, module.tqdm))
            module.tqdm = progress_bar
    try:
        yield
    finally:
        for module, original in swapped:
            module.tqdm = original


def run_clip_benchmark(argv):
    """Parse ``argv`` with clip_benchmark's parser and run its ``main_eval``."""
    from clip_benchmark import cli

    log.debug("clip_benchmark %s", " ".join(argv))
    with _argv(argv):
        _, args = cli.get_parser_args()
    with package_progress_bars():
        cli.main_eval(args)


def read_result(path):
    """A result JSON; clip_benchmark writes a bare NaN (acc5 with fewer than 5 classes), which json reads."""
    with open(path) as f:
        return json.load(f)
