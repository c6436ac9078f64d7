"""Every refusal happens before a log folder or a step exists, with a message that names the problem
and the fix: flag checks at argument parsing, file checks at start-up (right after
``init_distributed_device``); and --loss is never mistaken for --loss-dist-impl."""
import subprocess
import sys

import pytest
from open_clip_train import distributed, params

from xsample_openclip import registry
from xsample_openclip.patches import version

pytestmark = pytest.mark.openclip_compat

BASE = ["--train-data", "x.csv", "--model", "xs-tiny-vit-32", "--device", "cpu"]


def start(argv):
    """What main does first: parse, then init_distributed_device (where start-up checks run)."""
    args = params.parse_args(argv)
    distributed.init_distributed_device(args)
    return args


def refused(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        start([*BASE, *argv])
    assert exc.value.code not in (0, None)
    return capsys.readouterr().err + (exc.value.code if isinstance(exc.value.code, str) else "")


@pytest.mark.install_smoke
def test_loss_is_exact_and_not_an_abbreviation_of_loss_dist_impl():
    args = params.parse_args([*BASE, "--loss", "xsample"])
    assert args.loss == "xsample" and args.loss_dist_impl is None
    assert args.xsample_tau_s == "auto" and args.xsample_self_mass == 0.7 and args.xsample_encoder is None
    assert params.parse_args(BASE).loss == registry.DEFAULT_LOSS == "clip"


@pytest.mark.skipif("__import__('open_clip').__version__ == '3.0.0'",
                    reason="open-clip-torch 3.0.0 refuses --loss xclr (no CLIP.lock_text_tower): test_version_gate.py")
def test_the_clip_weight_default_is_the_validated_mix_for_xsample_only(capsys):
    """Absent, --xsample-clip-weight is 0.5 for --loss xsample (the validated setting, docs/studies/validation.md)
    and stays unset for the other losses, so --loss xclr, which has no image-text term, still refuses an
    explicit weight; an explicit 0 gives the paper's pure soft target."""
    assert params.parse_args([*BASE, "--loss", "xsample"]).xsample_clip_weight == 0.5
    assert params.parse_args([*BASE, "--loss", "xsample", "--xsample-clip-weight", "0"]).xsample_clip_weight == 0.0
    xclr = ["--loss", "xclr", "--xsample-views", "2", "--lock-text", "--lock-text-freeze-layer-norm"]
    assert params.parse_args([*BASE, *xclr]).xsample_clip_weight is None
    assert params.parse_args([*BASE, "--loss", "clip"]).xsample_clip_weight is None
    err = refused(capsys, *xclr, "--xsample-clip-weight", "0.5")
    assert "--xsample-clip-weight belongs to --loss xsample" in err
    # a schedule moves the default weight without a further flag
    assert params.parse_args([*BASE, "--loss", "xsample", "--epochs", "3", "--xsample-clip-weight-schedule",
                              "linear-down"]).xsample_clip_weight == 0.5


def test_stock_parser_alone_would_silently_train_clip():
    """Why the patch exists: OpenCLIP's own parser takes --loss as --loss-dist-impl."""
    stock = params.parse_args.__wrapped__([*BASE, "--loss", "xsample"])
    assert not hasattr(stock, "loss") and stock.loss_dist_impl == "xsample"


def test_unknown_loss_lists_the_registered_ones(capsys):
    err = refused(capsys, "--loss", "no-such-loss")
    assert "invalid choice: 'no-such-loss'" in err and "clip" in err and "xsample" in err


@pytest.mark.parametrize("argv,needle", [
    (["--siglip"], "use --loss xsample-siglip"),
    (["--distill-model", "ViT-B-32", "--distill-pretrained", "openai"], "does not support distillation"),
    (["--torchscript"], "drop --torchscript/--trace"),
    (["--dataset-type", "synthetic"], "same caption"),
    (["--xsample-tau-s", "0"], "--xsample-tau-s must be > 0"),
    (["--xsample-clip-weight", "1.5"], "--xsample-clip-weight must be in [0, 1]"),
    (["--xsample-image-weight", "-1"], "--xsample-image-weight must be >= 0"),
    (["--xsample-embeddings", "/nonexistent/table"], "python -m xsample_openclip.precompute"),
    (["--xsample-encoder", "/nonexistent/encoder"], "not a local sentence-transformers folder"),
    (["--model", "local-dir:/some/folder", "--pretrained", "/ckpt.pt"], "ignores --pretrained for local-dir:"),
])
def test_refused_combinations(capsys, argv, needle):
    assert needle in refused(capsys, "--loss", "xsample", *argv)


def test_a_minilm_config_this_openclip_cannot_tokenize_is_refused_at_parsing(capsys, monkeypatch):
    """OpenCLIP 3.0-3.2 with transformers 5 cannot tokenize for the -minilm configs; a run of one is refused
    at parsing, whatever the loss, naming the fix (the real refusal on those releases' legs; elsewhere the
    configs parse, and the refusal is checked with the problem stood in)."""
    from xsample_openclip.model_configs import minilm

    model = ["--model", "xs-tiny-vit-64-minilm"]
    if minilm.tokenizer_problem() is None:
        assert params.parse_args([*BASE, *model]).model == "xs-tiny-vit-64-minilm"
        monkeypatch.setattr(minilm, "tokenizer_problem", lambda: "cannot tokenize: pip install 'transformers<5'")
    for loss in ("clip", "xsample"):
        err = refused(capsys, *model, "--loss", loss)
        assert "--model xs-tiny-vit-64-minilm" in err and "transformers<5" in err
    assert params.parse_args([*BASE, "--loss", "xsample"]).model == "xs-tiny-vit-32"


def test_coca_models_are_refused(capsys):
    with pytest.raises(SystemExit):
        params.parse_args(["--train-data", "x.csv", "--model", "coca_ViT-B-32", "--loss", "xsample"])
    assert "does not support CoCa models" in capsys.readouterr().err


def test_stock_flags_still_work_with_the_default_loss():
    args = params.parse_args([*BASE, "--siglip"])
    assert args.siglip and args.loss == "clip"


def test_unsupported_open_clip_version_is_refused(monkeypatch):
    monkeypatch.setattr(version, "installed_open_clip_version", lambda: "4.2.0")
    with pytest.raises(SystemExit) as exc:
        params.parse_args([*BASE, "--loss", "xsample"])
    assert "open-clip-torch 4.2.0 is installed" in str(exc.value.code)
    assert "open-clip-torch 3.0.0 through 3.3.x" in str(exc.value.code)
    assert not hasattr(params.parse_args(BASE), "loss")  # stock behaviour for stock flags


def test_patches_are_idempotent():
    import open_clip
    import open_clip_train.train
    from xsample_openclip import patches

    before = (params.parse_args, open_clip.create_loss, open_clip_train.train.train_one_epoch)
    patches.install()
    patches.install()
    assert (params.parse_args, open_clip.create_loss, open_clip_train.train.train_one_epoch) == before


@pytest.mark.install_smoke
def test_refusal_happens_before_the_log_folder_is_made(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "open_clip_train.main", *BASE, "--loss", "xsample",
                           "--siglip", "--name", "refused"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "cannot be combined with --siglip" in proc.stderr
    assert "--loss xsample-siglip" in proc.stderr
    assert not (tmp_path / "logs").exists()


def test_sigmoid_loss_refuses_a_model_without_logit_bias(capsys):
    err = refused(capsys, "--loss", "xsample-siglip")
    assert "needs a model with a logit bias, and --model xs-tiny-vit-32 has none" in err and "--siglip" in err
    start([*BASE, "--loss", "xsample-siglip", "--siglip", "--xsample-tau-s", "0.1"])  # --siglip makes one: accepted
    start(["--train-data", "x.csv", "--model", "xs-tiny-sigmoid-32", "--device", "cpu", "--loss", "xsample-siglip",
           "--xsample-tau-s", "0.1"])


def test_a_changed_reimplemented_open_clip_function_is_refused(monkeypatch, capsys):
    release = version.reference_release()
    monkeypatch.setitem(version.SOURCES, release, {**version.SOURCES[release],
                                                   ("open_clip_train.data", "CsvDataset.__init__"): "0" * 64})
    err = refused(capsys, "--loss", "xsample")
    assert f"open_clip_train.data.CsvDataset.__init__ in open-clip-torch {release} is not the open-clip-torch " \
           f"{release} code" in err
    assert "patches/csv_data.py re-implements it" in err and "open-clip-torch 3.0.0 through 3.3.x" in err
    assert params.parse_args(BASE).loss == "clip"  # the stock loss does not use the re-implementation


@pytest.mark.parametrize("module,name,relied_on_by", [
    ("open_clip_train.train", "train_one_epoch", "patches/train_loop.py"),
    ("open_clip_train.train", "evaluate", "patches/evaluation.py"),
])
def test_a_changed_wrapped_open_clip_function_is_refused(monkeypatch, capsys, module, name, relied_on_by):
    """A release whose train_one_epoch/evaluate differ (here: a stand-in with other source) is refused by
    name, whatever its wrapper: the loop could otherwise drop the token ids or xsample_val_loss silently."""
    import importlib

    target = importlib.import_module(module)
    stock = getattr(target, name)

    def changed(*args, **kwargs):  # same behaviour, other source
        return stock(*args, **kwargs)

    monkeypatch.setattr(target, name, changed)
    err = refused(capsys, "--loss", "xsample")
    release = version.reference_release()
    assert f"{module}.{name} in open-clip-torch {release} is not the open-clip-torch {release} code that " \
           "xsample-openclip" in err
    assert relied_on_by in err and "pip install 'open-clip-torch[training]>=3.0,<3.4'" in err
    assert err.count(" code that xsample-openclip") == 1  # only the changed one is named
    assert params.parse_args(BASE).loss == "clip"  # the stock trainer is not refused


def test_a_full_caption_check_at_start_up_is_refused(capsys):
    err = refused(capsys, "--loss", "xsample", "--xsample-check-captions", "-1")
    assert "python -m xsample_openclip.precompute" in err and "--check" in err


def test_auto_tau_without_readable_captions_is_refused(capsys):
    err = refused(capsys, "--loss", "xsample")  # the default --xsample-tau-s auto; x.csv does not exist
    assert "--xsample-tau-s auto needs training captions to calibrate on" in err and "--xsample-tau-s 0.1" in err
