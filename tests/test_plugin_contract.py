"""The loss registry is a real extension point: a third-party package that knows only the contract in
``xsample_openclip.registry`` adds a loss, its flags, start-up check, resume-kept setting, end-of-epoch
hook and token ids, and trains with OpenCLIP's own ``main``; the package's own plugins obey the same
typed Protocols; and ``create_loss`` routes only arguments from the patched parser into the registry.
"""
import argparse
import textwrap

import open_clip
import pytest
from open_clip.loss import ClipLoss

import cli_runs as cr
import tiny_data
from xsample_openclip import registry

THIRD_PARTY = textwrap.dedent('''
    """A loss plugin written against xsample_openclip.registry alone: CLIP's loss times a factor."""
    import logging

    import torch
    from open_clip.loss import ClipLoss

    from xsample_openclip.registry import BATCH_TOKENS, StartupResult


    class Flags:
        title = "scaled-clip loss"

        def add_to(self, parser):
            parser.add_argument("--scaled-clip-factor", type=float, default=1.0)


    class ScaledClipLoss(torch.nn.Module):
        needs_batch_tokens = True

        def __init__(self, factor):
            super().__init__()
            self.factor, self.batches, self.clip = factor, 0, ClipLoss()

        def forward(self, image_features, text_features, logit_scale, output_dict=False, **extra):
            tokens = extra[BATCH_TOKENS]
            assert tokens.device.type == "cpu" and tokens.shape[0] == image_features.shape[0]
            self.batches += 1
            loss = self.factor * self.clip(image_features, text_features, logit_scale)
            return {"scaled_clip_loss": loss} if output_dict else loss

        def begin_epoch(self, epoch, args):
            pass

        def end_epoch(self, epoch, args):
            logging.info(f"scaled-clip: epoch {epoch} saw {self.batches} batches of host token ids")

        def single_process(self):
            return self


    class ScaledClipPlugin:
        name = "scaled-clip"
        flag_groups = (Flags(),)

        def validate(self, args):
            return [] if args.scaled_clip_factor > 0 else ["--scaled-clip-factor must be > 0"]

        def startup(self, args, resumed=None):
            return StartupResult(notes=[f"scaled-clip: start-up check passed, factor {args.scaled_clip_factor}"])

        def kept_on_resume(self, args):
            return ("scaled_clip_factor",)

        def build(self, args):
            return ScaledClipLoss(args.scaled_clip_factor)
''')


@pytest.fixture(scope="module")
def third_party(tmp_path_factory):
    """The package on a path of its own, with its metadata and entry point (as an install leaves them)."""
    site = tmp_path_factory.mktemp("site")
    (site / "scaledclip").mkdir()
    (site / "scaledclip" / "__init__.py").write_text(THIRD_PARTY)
    info = site / "scaledclip-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: scaledclip\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[open_clip_train.losses]\nscaled-clip = scaledclip:ScaledClipPlugin\n")
    return site


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    csv = tiny_data.write_csv(root / "data", n=16)
    return root, csv, cr.save_init(root / "init.pt")


def test_a_third_party_loss_trains_through_the_contract_alone(third_party, data):
    root, csv, init = data
    env = {"PYTHONPATH": str(third_party)}
    argv = cr.train_argv(csv, init, 16, "--loss", "scaled-clip", "--scaled-clip-factor", "2.5", "--save-most-recent",
                         epochs=1)
    run, _ = cr.launch(root, argv, env=env, name="third")
    log = (run / "out.log").read_text()
    assert "scaled-clip: start-up check passed, factor 2.5" in log
    assert "scaled-clip: epoch 0 saw 1 batches of host token ids" in log
    params = (run / "params.txt").read_text()
    assert "loss: scaled-clip" in params and "scaled_clip_factor: 2.5" in params
    img, txt, scale, _ = cr.features(init, csv)
    assert cr.logged_losses(run, "Scaled_clip_loss")[0] == pytest.approx(2.5 * cr.clip_loss(img, txt, scale), rel=2e-4)

    # its own setting is kept on resume, like every plugin's
    _, refused = cr.launch(root, [*argv, "--resume", "latest", "--scaled-clip-factor", "3"], env=env, name="third",
                           check=False)
    assert refused.returncode == 2
    assert "--scaled-clip-factor: 2.5 in that run, 3.0 now" in refused.stderr


def test_the_registry_lists_the_third_party_loss(third_party, data):
    root, csv, init = data
    _, proc = cr.launch(root, cr.train_argv(csv, init, 16, "--loss", "nope"), env={"PYTHONPATH": str(third_party)},
                        name="nope", check=False)
    assert proc.returncode == 2 and "scaled-clip" in proc.stderr and "xsample-siglip" in proc.stderr


def test_package_plugins_and_losses_follow_the_typed_contract():
    from xsample_openclip.losses import XSampleLoss, XSampleSigLipLoss

    from xsample_openclip.losses.xclr import XClrLoss

    for name in ("clip", "xsample", "xsample-siglip", "xclr"):
        assert isinstance(registry.load_plugin(name), registry.LossPlugin)
    assert isinstance(XSampleLoss(), registry.PluginLoss) and isinstance(XSampleSigLipLoss(), registry.PluginLoss)
    assert isinstance(XClrLoss(), registry.PluginLoss)
    assert not isinstance(ClipLoss(), registry.PluginLoss)
    groups = [g.title for name in registry.available_losses() for g in registry.load_plugin(name).flag_groups]
    assert groups.count("X-Sample caption targets (--loss xsample, --loss xsample-siglip and --loss xclr)") == 3  # shared, added once


def test_create_loss_routes_only_arguments_from_the_patched_parser():
    other_program = argparse.Namespace(loss="xsample", distill=False, model="RN50", siglip=False, local_loss=False,
                                       gather_with_grad=False, rank=0, world_size=1, horovod=False)
    assert type(open_clip.create_loss(other_program)) is ClipLoss  # stock behaviour, not the registry's


def test_duplicate_loss_names_are_refused(monkeypatch):
    from importlib.metadata import EntryPoint

    eps = [EntryPoint("xsample", "a.b:C", registry.GROUP), EntryPoint("xsample", "d.e:F", registry.GROUP)]
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: eps)
    registry._entry_points.cache_clear()
    try:
        with pytest.raises(registry.LossRegistryError, match="two packages register the loss 'xsample'"):
            registry.available_losses()
    finally:
        monkeypatch.undo()
        registry._entry_points.cache_clear()


def test_a_loss_with_part_of_the_contract_is_refused():
    """A loss with end_epoch but no begin_epoch would silently lose its hooks and token ids."""
    from xsample_openclip import registry

    class Partial:
        needs_batch_tokens = True

        def end_epoch(self, epoch, args):
            pass

        def single_process(self):
            return self

    class Whole(Partial):
        def begin_epoch(self, epoch, args):
            pass

    with pytest.raises(registry.LossRegistryError, match="not begin_epoch"):
        registry.check_built_loss(Partial(), "partial")
    registry.check_built_loss(Whole(), "whole")
    registry.check_built_loss(object(), "stock-like")  # a plain loss module: nothing to check
    assert isinstance(Whole(), registry.PluginLoss) and not isinstance(Partial(), registry.PluginLoss)
