"""Runs of OpenCLIP's real CLI for the end-to-end tests, and independent references to check them by.

A run starts from weights the test saved (``--pretrained``) and trains on data whose first global batch
is the whole data set, with crops that are the whole image (``--aug-cfg scale=(1.0,1.0)`` on square
images), so the features of that batch can be recomputed here from the saved weights and the loss the
run logged can be checked against a float64 computation written straight from the formulas.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from xsample_openclip.plugins import DEFAULT_CLIP_WEIGHT  # noqa: F401 - --loss xsample without the flag

MODEL = "xs-tiny-vit-32"
FULL_CROP = "scale=(1.0,1.0)"


def save_init(path, model=MODEL, seed=0):
    """Randomly initialised weights of ``model`` as an OpenCLIP checkpoint file."""
    import open_clip

    from xsample_openclip import model_configs

    model_configs.register()
    torch.manual_seed(seed)
    torch.save({"epoch": 0, "state_dict": open_clip.create_model(model).state_dict()}, path)
    return str(path)


def launch(cwd, argv, nproc=1, name="run", timeout=600, env=None, check=True):
    """``python -m open_clip_train.main`` (under torchrun when ``nproc`` > 1); the run's log folder."""
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     "--nproc_per_node", str(nproc)]
    cmd = [*launcher, "-m", "open_clip_train.main", *argv, "--name", name]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **(env or {}))
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return Path(cwd) / "logs" / name, proc


def train_argv(csv, init, batch_size, *extra, epochs=3, model=MODEL):
    """SGD with momentum (timm's, through OpenCLIP's --opt): weight updates are linear in the gradients,
    so two runs agree as closely as their gradients do (AdamW's normalised steps would turn float
    rounding of near-zero gradient entries into full-size updates)."""
    return ["--train-data", str(csv), "--dataset-type", "csv", "--model", model, "--pretrained", init,
            "--batch-size", str(batch_size), "--epochs", str(epochs), "--workers", "0", "--device", "cpu",
            "--precision", "fp32", "--opt", "timm/momentum", "--momentum", "0.9", "--lr", "0.05", "--warmup", "1",
            "--wd", "0", "--log-every-n-steps", "1", "--seed", "0", "--aug-cfg", FULL_CROP, *extra]


def logged_losses(run_dir, key="Loss"):
    """The per-step values of one loss key in out.log (OpenCLIP prints 5 significant digits)."""
    return [float(v) for v in re.findall(rf"(?<![A-Za-z_]){key}: ([0-9.eE+-]+) \(", (Path(run_dir) / "out.log").read_text())]


def weights(run_dir, epoch):
    state = torch.load(Path(run_dir) / "checkpoints" / f"epoch_{epoch}.pt", map_location="cpu", weights_only=True)
    return {k.removeprefix("module."): v for k, v in state["state_dict"].items()}


#: The least relative update ||w - w0|| / ||w0|| (all weights together, L2) a run must show before its
#: update counts as compared. Measured with ``train_argv`` (SGD momentum 0.9, lr 0.05, 16 samples): the
#: runs tests/test_cli_multiprocess.py compares 5.4e-3 to 1.8e-2 after 3 steps (xs-tiny-vit-32), those of
#: tests/test_cli_multiprocess_sigmoid.py 0.66 after 2 (xs-tiny-sigmoid-32); a run without a step (--lr 0)
#: 0 exactly.
MIN_UPDATE = 1e-3


def initial_weights(init):
    return {k.removeprefix("module."): v for k, v in torch.load(init, weights_only=True)["state_dict"].items()}


def relative_update(state, init_state):
    """||state - init|| / ||init|| over all tensors together (L2, float64): how far a run moved."""
    moved = sum(float((state[k] - init_state[k]).double().norm() ** 2) for k in state)
    size = sum(float(init_state[k].double().norm() ** 2) for k in state)
    return (moved / size) ** 0.5


def update_difference(a, b, init, min_update=MIN_UPDATE):
    """max over tensors of |(a - init) - (b - init)| / |b - init| (L2): how far two runs' updates differ.

    Both runs must have moved (relative update above ``min_update``): two runs that took no step have
    equal updates and would prove nothing. A tensor that ``b`` left unchanged must be unchanged in ``a``
    too (its difference is infinite otherwise, not skipped)."""
    assert a.keys() == b.keys()
    init = initial_weights(init)
    for which, state in (("first", a), ("second", b)):
        moved = relative_update(state, init)
        if not moved > min_update:
            raise AssertionError(f"the {which} run's weights moved by {moved:.3g} (relative to the initial "
                                 f"weights), not above {min_update}: no training step changed them, so "
                                 "comparing the two runs' updates proves nothing")
    worst = 0.0
    for k in a:
        moved = (b[k] - init[k]).double().norm()
        if moved > 0:
            worst = max(worst, float((a[k] - b[k]).double().norm() / moved))
        elif not torch.equal(a[k], b[k]):
            worst = float("inf")
    return worst


# --- independent references -----------------------------------------------------------------------

def csv_rows(csv):
    import pandas as pd

    df = pd.read_csv(csv, sep="\t")
    return df["filepath"].tolist(), df["title"].tolist()


@torch.no_grad()
def features(init, csv, model=MODEL, train=True, bias=False):
    """float64 image and text features and logit scale (and bias) of ``init`` on every sample, in CSV
    order, through the training transform (whole-image crops: deterministic) or the validation one."""
    import open_clip
    from PIL import Image

    from xsample_openclip import model_configs

    model_configs.register()
    net, train_tf, val_tf = open_clip.create_model_and_transforms(model, pretrained=init, output_dict=True,
                                                                  aug_cfg={"scale": (1.0, 1.0)})
    preprocess = train_tf if train else val_tf
    net.eval()
    paths, captions = csv_rows(csv)
    images = torch.stack([preprocess(Image.open(p)) for p in paths])
    tokens = open_clip.get_tokenizer(model)(captions)
    out = net(images, tokens)
    found = (out["image_features"].double(), out["text_features"].double(), float(out["logit_scale"]), captions)
    return found + (float(out["logit_bias"]),) if bias else found


def minilm(captions):
    from xsample_openclip.targets.encoders import SentenceEncoder

    return SentenceEncoder("minilm").encode(list(captions)).double()


def clip_loss(img, txt, scale, rows=None):
    """CLIP's symmetric cross-entropy for the anchors ``rows`` (all by default) against every column."""
    rows = np.arange(len(img)) if rows is None else np.asarray(rows)
    logits = scale * img.numpy() @ txt.numpy().T
    return float(np.mean([(_ce_row(logits[i], i) + _ce_row(logits.T[i], i)) / 2 for i in rows]))


def xsample_loss(img, txt, scale, captions_emb, tau_s, rows=None, clip_weight=0.0):
    """X-Sample: CE of (1 - w) row softmax(S/tau_s) + w identity targets, both directions, for the anchors
    ``rows`` (w: ``--xsample-clip-weight``; a run of ``--loss xsample`` without the flag has
    ``plugins.DEFAULT_CLIP_WEIGHT``)."""
    rows = np.arange(len(img)) if rows is None else np.asarray(rows)
    e = captions_emb.numpy()
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    s = e @ e.T / tau_s
    logits = scale * img.numpy() @ txt.numpy().T
    total = 0.0
    for i in rows:
        p = np.exp(s[i] - s[i].max())
        p = (1 - clip_weight) * p / p.sum()
        p[i] += clip_weight
        total += (_soft_ce(logits[i], p) + _soft_ce(logits.T[i], p)) / 2
    return float(total / len(rows))


def _ce_row(z, i):
    return float(np.log(np.exp(z - z.max()).sum()) + z.max() - z[i])


def _soft_ce(z, p):
    log_z = np.log(np.exp(z - z.max()).sum()) + z.max()
    return float(-(p * (z - log_z)).sum())


def rank_rows(n, world, rank, epoch=0, seed=0):
    """The dataset rows ``DistributedSampler`` gives ``rank`` (OpenCLIP's CSV loader under torchrun)."""
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def sigmoid_loss(img, txt, scale, bias, captions_emb=None, tau_s=None, rows=None):
    """SigLIP's loss with targets t (identity, or exp((S - 1) / tau_s) from caption embeddings), for the
    image anchors ``rows`` (all by default) against every text, divided by the number of anchors."""
    z = scale * img.numpy() @ txt.numpy().T + bias
    if captions_emb is None:
        t = np.eye(len(z))
    else:
        e = captions_emb.numpy()
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        t = np.exp((e @ e.T - 1.0) / tau_s)
        np.fill_diagonal(t, 1.0)
    rows = np.arange(len(z)) if rows is None else np.asarray(rows)
    z, t = z[rows], t[rows]
    softplus = np.logaddexp(0.0, z)
    return float((softplus - t * z).sum() / len(z))
