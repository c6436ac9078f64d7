"""Two views per image (``--xsample-views 2``) and ``--loss xclr`` through OpenCLIP's own ``main`` and loaders.

Data path (in-process, OpenCLIP's ``get_data`` as main calls it): CSV and webdataset training batches
are ``[B, 2, C, H, W]`` with two independently augmented views; validation stays one view.

CLI runs start from saved weights on 16 samples (one batch = the whole data set) with views made
identical and deterministic (whole-image crops, no jitter, grayscale or flip), so the first logged loss
can be recomputed here in float64 from the saved weights (``test_xclr_loss.xclr_reference``):
- one process: ``--loss xclr`` and ``--loss xsample --xsample-views 2 --xsample-image-weight``; the
  checkpoint is a stock OpenCLIP checkpoint (strict load), the text tower and logit scale unchanged;
- ``--accum-freq 2`` equals one batch of 16 (loss and weights), in one process and in two;
- two gloo processes (torchrun) equal one process: the first logged loss against the formula in every
  local-loss / gather-with-grad mode, the weight update against the one-process run with
  ``--gather-with-grad`` (OpenCLIP's single-process gradient);
- bf16 autocast and ``--resume latest`` run.
Also: the refusals at parsing, the view transform (OpenCLIP's plus flip and blur), and
``--xsample-tau-s auto`` putting the asked self-mass on the other view (2N - 1 target columns).
"""
import itertools

import pytest
import torch

import cli_runs as cr
import tiny_data
from test_xclr_loss import xclr_reference

N = 16
TAU_S = 0.2
#: whole-image crops, jitter and grayscale off (probability 0), no flip: the two views are identical
SAME_VIEWS = ("--aug-cfg", cr.FULL_CROP, "color_jitter_prob=0", "gray_scale_prob=0", "--xsample-view-flip", "0")
XCLR = ("--loss", "xclr", "--xsample-views", "2", "--lock-text", "--lock-text-freeze-layer-norm",
        "--xsample-tau-s", str(TAU_S))
SAME_UPDATE = 1e-3  # as in test_cli_multiprocess.py: float32 rounding ~3e-5, other semantics ~1


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("views")
    csv = tiny_data.write_csv(root / "data", n=N)
    init = cr.save_init(root / "init.pt")
    img, txt, scale, captions = cr.features(init, csv)
    return {"root": root, "csv": csv, "init": init, "img": img, "txt": txt, "scale": scale,
            "captions": cr.minilm(captions)}


def run(setup, name, batch, *extra, nproc=1, epochs=3):
    cwd = setup["root"] / name
    cwd.mkdir(exist_ok=True)
    argv = cr.train_argv(setup["csv"], setup["init"], batch, *extra, *SAME_VIEWS, epochs=epochs)
    return cr.launch(cwd, argv, nproc=nproc)[0]


def xclr_formula(setup, rows=None, temperature=0.1):
    """float64 X-CLR of the identical views of every sample (or the anchors of the samples ``rows``)."""
    z = setup["img"]
    if rows is None:
        return xclr_reference(z, z, setup["captions"], TAU_S, temperature)
    return _rows_reference(z, setup["captions"], rows, temperature)


def _rows_reference(z, captions, rows, temperature):
    """Mean over the two views of the samples ``rows`` of the X-CLR row loss (--local-loss)."""
    import numpy as np

    n = len(z)
    zz = np.concatenate([z.numpy(), z.numpy()])  # block layout: view 1 of all, then view 2
    e = captions.numpy() / np.linalg.norm(captions.numpy(), axis=1, keepdims=True)
    ee = np.concatenate([e, e])
    s, logits = ee @ ee.T / TAU_S, zz @ zz.T / temperature
    total = []
    for r in [i + v * n for i in rows for v in (0, 1)]:
        keep = np.arange(2 * n) != r
        p = np.exp(s[r, keep] - s[r, keep].max())
        p /= p.sum()
        q = logits[r, keep]
        total.append(-(p * (q - (np.log(np.exp(q - q.max()).sum()) + q.max()))).sum())
    return float(np.mean(total))


def same_update(a, b, init):
    """``update_difference`` of two runs whose image towers both moved: the text tower is locked, so the
    whole-model relative update (cli_runs.MIN_UPDATE) is diluted by its frozen token embedding."""
    init_state = cr.initial_weights(init)
    for state in (a, b):
        visual = [k for k in state if k.startswith("visual.")]
        assert cr.relative_update({k: state[k] for k in visual}, init_state) > cr.MIN_UPDATE
    return cr.update_difference(a, b, init, min_update=0.0) < SAME_UPDATE


@pytest.fixture(scope="module")
def single(setup):
    return run(setup, "one-xclr", N, *XCLR)


# --- data path ----------------------------------------------------------------------------------------

def _loader_batch(train_data, dataset_type, tmp_path, extra=()):
    import open_clip
    from open_clip_train import data, distributed, params

    argv = ["--train-data", str(train_data), "--dataset-type", dataset_type, "--model", cr.MODEL, "--device", "cpu",
            "--batch-size", "4", "--workers", "0", "--train-num-samples", "16", *XCLR, *extra,
            "--logs", str(tmp_path)]
    args = params.parse_args(argv)
    distributed.init_distributed_device(args)  # start-up: fills in the SimCLR augmentation
    _, train_tf, val_tf = open_clip.create_model_and_transforms(cr.MODEL, aug_cfg=args.aug_cfg)
    found = data.get_data(args, (train_tf, val_tf), epoch=0, tokenizer=open_clip.get_tokenizer(cr.MODEL))
    images, texts = next(iter(found["train"].dataloader))
    return args, images, texts


@pytest.mark.skipif("__import__('open_clip').__version__ == '3.0.0'",
                    reason="open-clip-torch 3.0.0 refuses --loss xclr (no CLIP.lock_text_tower): test_version_gate.py")
@pytest.mark.openclip_compat
@pytest.mark.parametrize("kind", ["csv", "webdataset"])
def test_loaders_give_two_independent_views(kind, csv_data, wds_data, tmp_path):
    torch.manual_seed(0)
    args, images, texts = _loader_batch(csv_data if kind == "csv" else wds_data, kind, tmp_path)
    assert args.aug_cfg == {"scale": (0.2, 1.0), "color_jitter": (0.4, 0.4, 0.4, 0.1), "color_jitter_prob": 0.8,
                            "gray_scale_prob": 0.2}
    assert images.shape == (4, 2, 3, 32, 32) and texts.shape[0] == 4
    assert all(not torch.equal(images[i, 0], images[i, 1]) for i in range(4))  # augmented independently
    _, same, _ = _loader_batch(csv_data if kind == "csv" else wds_data, kind, tmp_path, SAME_VIEWS)
    assert all(torch.equal(same[i, 0], same[i, 1]) for i in range(4))


@pytest.mark.skipif("__import__('open_clip').__version__ == '3.0.0'",
                    reason="open-clip-torch 3.0.0 refuses --loss xclr (no CLIP.lock_text_tower): test_version_gate.py")
@pytest.mark.openclip_compat
def test_validation_data_stays_one_view(csv_data, tmp_path):
    import open_clip
    from open_clip_train import data, distributed, params

    args = params.parse_args(["--train-data", str(csv_data), "--val-data", str(csv_data), "--dataset-type", "csv",
                              "--model", cr.MODEL, "--device", "cpu", "--batch-size", "4", "--workers", "0", *XCLR])
    distributed.init_distributed_device(args)
    _, train_tf, val_tf = open_clip.create_model_and_transforms(cr.MODEL, aug_cfg=args.aug_cfg)
    found = data.get_data(args, (train_tf, val_tf), epoch=0, tokenizer=open_clip.get_tokenizer(cr.MODEL))
    assert next(iter(found["val"].dataloader))[0].shape == (4, 3, 32, 32)


# --- one process ---------------------------------------------------------------------------------------

@pytest.mark.openclip_compat
@pytest.mark.skipif("__import__('open_clip').__version__ == '3.0.0'",
                    reason="open-clip-torch 3.0.0 refuses --loss xclr (no CLIP.lock_text_tower): test_version_gate.py")
def test_xclr_first_loss_is_the_formula_and_checkpoint_is_stock(setup, single):
    import open_clip

    assert cr.logged_losses(single)[0] == pytest.approx(xclr_formula(setup), rel=2e-4)
    assert cr.logged_losses(single, "Xclr_loss")[0] == cr.logged_losses(single)[0]
    open_clip.create_model_and_transforms(cr.MODEL, pretrained=str(single / "checkpoints" / "epoch_3.pt"))  # strict
    init, final = cr.initial_weights(setup["init"]), cr.weights(single, 3)
    moved = {k for k in init if not torch.equal(init[k], final[k])}
    assert moved and all(k.startswith("visual.") for k in moved)  # text tower locked, logit scale fixed
    assert "logit_scale" not in moved and "token_embedding.weight" not in moved
    log = (single / "out.log").read_text()
    assert "Loss: xclr (image-image X-CLR over two views): tau_s=0.2, temperature=0.1" in log
    assert "xsample_views: 2" in (single / "params.txt").read_text()


@pytest.mark.openclip_compat
def test_xsample_two_views_with_image_term_first_loss_is_the_formula(setup):
    w = 0.5
    run_dir = run(setup, "one-xsample-views", N, "--loss", "xsample", "--xsample-tau-s", str(TAU_S),
                  "--xsample-views", "2", "--xsample-image-weight", str(w), epochs=1)
    z, txt, scale = setup["img"], setup["txt"], setup["scale"]
    image_text = cr.xsample_loss(z, txt, scale, setup["captions"], TAU_S,  # identical views: the one-view term
                                 clip_weight=cr.DEFAULT_CLIP_WEIGHT)
    image_image = xclr_reference(z, z, setup["captions"], TAU_S, 1.0 / scale)
    assert cr.logged_losses(run_dir)[0] == pytest.approx(image_text + w * image_image, rel=2e-4)


def test_accum_freq_equals_one_batch(setup, single):
    accum = run(setup, "accum-xclr", N // 2, *XCLR, "--accum-freq", "2")
    assert cr.logged_losses(accum)[0] == pytest.approx(xclr_formula(setup), rel=2e-4)
    assert same_update(cr.weights(accum, 3), cr.weights(single, 3), setup["init"])


@pytest.mark.openclip_compat
@pytest.mark.skipif("__import__('open_clip').__version__ == '3.0.0'",
                    reason="open-clip-torch 3.0.0 refuses --loss xclr (no CLIP.lock_text_tower): test_version_gate.py")
def test_bf16_autocast_and_resume(setup):
    first = run(setup, "amp", N // 2, *XCLR, "--precision", "amp_bf16", "--save-most-recent", epochs=1)
    argv = cr.train_argv(setup["csv"], setup["init"], N // 2, *XCLR, *SAME_VIEWS, "--precision", "amp_bf16",
                         "--resume", "latest", epochs=2)
    resumed, _ = cr.launch(first.parent.parent, argv, name=first.name)
    log = (resumed / "out.log").read_text()
    assert "=> resuming checkpoint" in log and "Train Epoch: 1" in log
    losses = cr.logged_losses(resumed)
    assert len(losses) == 4 and all(0 < v < 10 for v in losses)  # 2 steps per epoch, both launches


# --- two processes -------------------------------------------------------------------------------------

@pytest.mark.openclip_compat
@pytest.mark.skipif("__import__('open_clip').__version__ == '3.0.0'",
                    reason="open-clip-torch 3.0.0 refuses --loss xclr (no CLIP.lock_text_tower): test_version_gate.py")
@pytest.mark.parametrize("mode", list(itertools.product([False, True], [False, True])),
                         ids=lambda m: f"local{int(m[0])}-gwg{int(m[1])}")
def test_two_processes_match_one(setup, single, mode):
    flags = [f for f, on in (("--local-loss", mode[0]), ("--gather-with-grad", mode[1])) if on]
    two = run(setup, f"two-{int(mode[0])}{int(mode[1])}", N // 2, *XCLR, *flags, nproc=2)
    rows = cr.rank_rows(N, 2, 0) if mode[0] else None
    assert cr.logged_losses(two)[0] == pytest.approx(xclr_formula(setup, rows), rel=2e-4)
    if mode[1]:  # --gather-with-grad: OpenCLIP's gradient is the one-process gradient
        assert same_update(cr.weights(two, 3), cr.weights(single, 3), setup["init"])
    assert "CPU distributed training (2 processes, backend gloo)" in (two / "out.log").read_text()


# --- refusals at argument parsing ------------------------------------------------------------------

@pytest.mark.parametrize("argv,needle", [
    (["--loss", "xclr", "--lock-text", "--lock-text-freeze-layer-norm"], "add --xsample-views 2"),
    (["--loss", "xclr", "--xsample-views", "2"], "add --lock-text --lock-text-freeze-layer-norm"),
    (["--loss", "xclr", "--xsample-views", "2", "--lock-text"], "--lock-text-freeze-layer-norm"),
    ([*XCLR, "--lock-text-unlocked-layers", "1"], "--lock-text-unlocked-layers 0"),
    ([*XCLR, "--xsample-image-weight", "0.5"], "--loss xclr has no image-text term"),
    ([*XCLR, "--xsample-xclr-temperature", "0"], "--xsample-xclr-temperature must be > 0"),
    ([*XCLR, "--aug-cfg", "use_timm=True"], "drop use_timm"),
    ([*XCLR, "--aug-cfg", "color_jitter=0.4"], "needs four values"),
    ([*XCLR, "--xsample-view-flip", "2"], "--xsample-view-flip must be a probability"),
    (["--loss", "clip", "--xsample-views", "2"], "drop it for --loss clip"),
    (["--xsample-views", "2"], "drop it for --loss clip"),
    (["--loss", "xsample-siglip", "--siglip", "--xsample-views", "2"], "not supported by --loss xsample-siglip"),
])
def test_refused_at_parsing(argv, needle, capsys):
    from open_clip_train import params

    with pytest.raises(SystemExit) as exc:
        params.parse_args(["--train-data", "x.csv", "--model", cr.MODEL, "--device", "cpu", *argv])
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_xclr_parses_with_its_defaults():
    from open_clip_train import params

    args = params.parse_args(["--train-data", "x.csv", "--model", cr.MODEL, *XCLR])
    assert args.loss == "xclr" and args.xsample_views == 2 and args.xsample_xclr_temperature == 0.1
    assert args.xsample_view_flip == 0.5 and args.xsample_view_blur == 0.0
    assert params.parse_args(["--train-data", "x.csv", *XCLR, "--xsample-xclr-temperature", "learned"]
                             ).xsample_xclr_temperature == "learned"


def test_view_transform_adds_flip_and_blur_to_openclips_transform():
    import open_clip
    from PIL import Image
    from torchvision.transforms import GaussianBlur

    from xsample_openclip import views

    _, base, _ = open_clip.create_model_and_transforms(cr.MODEL, aug_cfg={"scale": (1.0, 1.0)})
    image = Image.fromarray((torch.arange(32 * 32 * 3) % 251).reshape(32, 32, 3).to(torch.uint8).numpy())
    assert views.view_transform(base, 0.0, 0.0) is base
    flipped = views.view_transform(base, 1.0, 0.0)(image)
    assert torch.allclose(flipped, base(image).flip(-1), atol=1e-5)
    blurred = views.view_transform(base, 0.0, 1.0)
    kernels = [t.kernel_size for s in blurred.transforms if hasattr(s, "transforms") for t in s.transforms
               if isinstance(t, GaussianBlur)]
    assert [list(k) for k in kernels] == [[3, 3]]  # a tenth of 32 px, odd, at least 3
    assert not torch.allclose(blurred(image), base(image))
    pair = views.TwoViews(views.view_transform(base, 0.5, 0.0))(image)
    assert pair.shape == (2, 3, 32, 32)


def test_auto_tau_s_puts_the_self_mass_on_the_other_view(csv_data, tmp_path):
    """--xsample-tau-s auto with --loss xclr: the mass of each target row on the sample's other view is
    --xsample-self-mass, computed here from the tiled targets over a batch that is the whole data set."""
    import numpy as np
    from open_clip_train import distributed, params

    argv = ["--train-data", str(csv_data), "--dataset-type", "csv", "--model", cr.MODEL, "--device", "cpu",
            "--batch-size", "64", "--logs", str(tmp_path)]
    xclr = params.parse_args([*argv, *XCLR[:-2], "--xsample-tau-s", "auto"])
    distributed.init_distributed_device(xclr)
    e = cr.minilm(tiny_data.samples(64)[i][0] for i in range(64)).numpy()
    s = e @ e.T / np.linalg.norm(e, axis=1)[:, None] / np.linalg.norm(e, axis=1)[None, :]
    w = np.exp((s - 1.0) / xclr.xsample_tau_s)
    np.fill_diagonal(w, 0.0)
    other_view = 1.0 / (1.0 + 2.0 * w.sum(1))  # the other view weighs exp(1/tau_s); others appear twice
    assert other_view.mean() == pytest.approx(0.7, abs=1e-6)
    one_view = params.parse_args([*argv, "--loss", "xsample", "--xsample-tau-s", "auto"])
    distributed.init_distributed_device(one_view)
    assert xclr.xsample_tau_s < one_view.xsample_tau_s  # 2N - 1 columns at the same self-mass: sharper


def test_accum_freq_with_two_processes_equals_one_batch(setup, single):
    two = run(setup, "two-accum", N // 4, *XCLR, "--accum-freq", "2", "--gather-with-grad", nproc=2)
    assert cr.logged_losses(two)[0] == pytest.approx(xclr_formula(setup), rel=2e-4)
    assert same_update(cr.weights(two, 3), cr.weights(single, 3), setup["init"])
