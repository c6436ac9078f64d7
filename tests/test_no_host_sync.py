"""The training path never copies a device tensor to the host per step.

There is no accelerator here, so the device is ``meta``: tensors with shapes and dtypes but no data,
on which every device-to-host read (``.cpu()``, ``.item()``, ``.tolist()``, ``float()``, ``bool()``, a
data-dependent shape such as ``nonzero``) raises. Whatever runs to completion on meta read nothing back.

Proved here, forward and backward:
- ``XSampleLoss`` and ``XSampleSigLipLoss`` with features and logit scale/bias on meta, their caption
  embeddings from a real ``TableCaptionEmbeddings`` (fed the CPU token tensor) or from
  ``OnlineCaptionEmbeddings`` with a stub encoder (on the host, or on the device with its cache there);
- OpenCLIP's own ``train_one_epoch`` (with ``--accum-freq`` 1 and 2) under this package's wrapper, whose
  ``TokenModel`` + ``RecordingLoader`` hand the loader's host token tensor to the loss while the model
  gets the device copy (OpenCLIP's own logging reads are off: they only run on the master rank);
- ``FiniteLossGuard`` records a meta loss at every call and reads it only at OpenCLIP's logging steps;
- token ids on a device are refused by both embedders with ``DeviceTokensError``.
Each scenario fails once a host read is added to its path: ``test_an_added_host_read_is_caught`` adds
one (``.cpu()``, ``.item()``, ``.tolist()``, ``bool()``) to each path and expects the meta error.
"""
import argparse
import math
import zlib

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer
from open_clip_train.data import DataInfo
from open_clip_train.train import train_one_epoch as stock_train_one_epoch

from xsample_openclip import registry
from xsample_openclip.losses import XSampleLoss, XSampleSigLipLoss
from xsample_openclip.losses import common
from xsample_openclip.losses import sigmoid as sigmoid_module
from xsample_openclip.losses import softmax as softmax_module
from xsample_openclip.patches import finite, train_loop
from xsample_openclip.patches.finite import FiniteLossGuard
from xsample_openclip.patches.train_loop import wrap_train_one_epoch
from xsample_openclip.targets.decode import TokenDecoder
from xsample_openclip.targets.embedders import OnlineCaptionEmbeddings, TableCaptionEmbeddings
from xsample_openclip.targets.keys import DeviceTokensError, token_keys
from xsample_openclip.targets.table import table_meta, write_table

META = torch.device("meta")
HOST_READ = r"meta"  # every meta read error names the meta device ("Cannot copy out of meta tensor", ...)
CAPTIONS = ["a cat on a mat", "a dog in the snow", "two red apples", "a cat on a mat", "an empty street",
            "a boat at sea", "three birds", "a dog in the snow"]  # duplicates on purpose
WIDTH = 16


@pytest.fixture(scope="module")
def tokenizer():
    return SimpleTokenizer()


@pytest.fixture(scope="module")
def tokens(tokenizer):
    return tokenizer(CAPTIONS)  # the loader's CPU tensor


def stub_embedding(text, dim=WIDTH):
    g = torch.Generator().manual_seed(zlib.crc32(text.encode()))
    return F.normalize(torch.randn(dim, generator=g), dim=0)


class StubEncoder:
    """A frozen caption encoder that returns its embeddings on its own device (like a GPU encoder)."""

    name, dim = "stub", WIDTH

    def __init__(self, device):
        self.device = torch.device(device)
        self.encoded = 0

    def encode(self, texts):
        self.encoded += len(texts)
        return torch.stack([stub_embedding(t) for t in texts]).to(self.device)


@pytest.fixture(scope="module")
def table_embedder(tmp_path_factory, tokenizer):
    distinct = sorted(set(CAPTIONS))
    keys = token_keys(tokenizer(distinct))
    emb = torch.stack([stub_embedding(t) for t in distinct]).numpy().astype(np.float16)
    table = write_table(tmp_path_factory.mktemp("table"), keys, emb, table_meta(tokenizer, "stub", "stub-model"))
    return TableCaptionEmbeddings(table, TokenDecoder(tokenizer))


EMBEDDERS = ["table", "online-host", "online-device"]


def make_embedder(kind, table_embedder, tokenizer):
    if kind == "table":
        return table_embedder
    return OnlineCaptionEmbeddings(TokenDecoder(tokenizer), StubEncoder("cpu" if kind == "online-host" else META))


@pytest.fixture(params=EMBEDDERS)
def embedder(request, table_embedder, tokenizer):
    return make_embedder(request.param, table_embedder, tokenizer)


def meta_leaf(*shape, value=None):
    if value is not None:
        return torch.tensor(value).to(META).requires_grad_(True)
    return torch.empty(*shape, device=META, requires_grad=True)


def loss_scenario(loss_fn, tokens, siglip):
    """Forward + backward of a loss on meta features, the caption embeddings from the host tokens."""
    n = len(tokens)
    img, txt = meta_leaf(n, 32), meta_leaf(n, 32)
    scale = meta_leaf(value=10.0)
    args = (img, txt, scale) + ((meta_leaf(value=-10.0),) if siglip else ())
    losses = loss_fn(*args, batch_tokens=tokens, output_dict=True)
    total = sum(losses.values())
    total.backward()
    assert total.device == META and total.shape == ()
    for leaf in args:
        assert leaf.grad is not None and leaf.grad.device == META and leaf.grad.shape == leaf.shape
    return losses


SOFTMAX_SETTINGS = dict(tau_s=0.1, clip_weight=0.1, image_weight=0.5)


def test_softmax_loss_on_the_device_reads_nothing(embedder, tokens):
    duplicates = embedder.stats.counts["duplicates"]
    losses = loss_scenario(XSampleLoss(embedder, **SOFTMAX_SETTINGS), tokens, siglip=False)
    assert set(losses) == {"xsample_loss", "xsample_image_loss"}  # the image-image term ran too
    assert embedder.stats.counts["duplicates"] == duplicates + 2  # the host-side caption checks still ran


@pytest.mark.parametrize("target", ["kernel", "softmax"])
def test_sigmoid_loss_on_the_device_reads_nothing(embedder, tokens, target):
    losses = loss_scenario(XSampleSigLipLoss(embedder, tau_s=0.1, target=target), tokens, siglip=True)
    assert set(losses) == {"xsample_siglip_loss"}


def test_online_cache_on_the_device_serves_repeats(tokenizer, tokens):
    """With the encoder on the device its cache lives there: a repeated batch encodes nothing, reads nothing."""
    encoder = StubEncoder(META)
    online = OnlineCaptionEmbeddings(TokenDecoder(tokenizer), encoder)
    first = online(tokens)
    assert first.device == META and first.shape == (len(CAPTIONS), WIDTH)
    assert encoder.encoded == len(set(CAPTIONS))
    again = online(tokens)
    assert again.device == META and encoder.encoded == len(set(CAPTIONS)) and online.hits == len(CAPTIONS)


# --- OpenCLIP's training step, patched ------------------------------------------------------------

class StubCLIP(nn.Module):
    """A CLIP-shaped model: output dict like OpenCLIP's, a logit_bias when SigLIP-like."""

    def __init__(self, siglip):
        super().__init__()
        self.visual = nn.Linear(12, 32)
        self.token_embedding = nn.Embedding(49408, 32)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0)) if siglip else None

    def forward(self, image=None, text=None):
        out = {"image_features": F.normalize(self.visual(image), dim=-1),
               "text_features": F.normalize(self.token_embedding(text).mean(dim=1), dim=-1),
               "logit_scale": self.logit_scale.exp()}
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out


class HostLoader:
    """Batches (images, token ids) made on the host, as OpenCLIP's data loaders make them."""

    def __init__(self, tokens, batch_size=4, repeats=2):
        images = torch.randn(len(tokens), 12)
        self.batches = [(images[i:i + batch_size], tokens[i:i + batch_size])
                        for _ in range(repeats) for i in range(0, len(tokens), batch_size)]
        self.num_batches = len(self.batches)
        self.num_samples = self.num_batches * batch_size

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return self.num_batches


class SpyEmbedder:
    """Passes through to an embedder, keeping the token tensors the loss handed it."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def __call__(self, batch_tokens):
        self.seen.append(batch_tokens)
        return self.inner(batch_tokens)


def train_loop_scenario(loss_fn, siglip, tokens, accum_freq):
    """One epoch of OpenCLIP's ``train_one_epoch`` (this package's wrapper around it) on the meta device."""
    with torch.device(META):
        model = StubCLIP(siglip)
    loader = HostLoader(tokens)
    data = {"train": DataInfo(dataloader=loader)}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # rank 1: OpenCLIP's own logging (loss.item(), logit_scale.item()) runs on the master rank only
    args = argparse.Namespace(device="meta", precision="fp32", accum_freq=accum_freq, distill=False,
                              skip_scheduler=True, log_every_n_steps=1, rank=1, world_size=1, horovod=False,
                              grad_clip_norm=None, batch_size=4, wandb=False)
    wrap_train_one_epoch(stock_train_one_epoch)(model, data, loss_fn, 0, optimizer, None, None, None, args)
    for name, p in model.named_parameters():  # the last step's backward reached every parameter
        assert p.grad is not None and p.grad.device == META, name
    return loader


@pytest.mark.parametrize("accum_freq", [1, 2])
@pytest.mark.parametrize("siglip", [False, True])
def test_patched_training_loop_hands_host_tokens_and_reads_nothing(table_embedder, tokens, siglip, accum_freq):
    spy = SpyEmbedder(table_embedder)
    loss_fn = XSampleSigLipLoss(spy, tau_s=0.1) if siglip else XSampleLoss(spy, **SOFTMAX_SETTINGS)
    assert isinstance(loss_fn, registry.PluginLoss)
    loader = train_loop_scenario(loss_fn, siglip, tokens, accum_freq)
    host = [texts for _, texts in loader.batches]
    assert len(spy.seen) == len(host)  # one loss call per micro-batch
    for call, seen in enumerate(spy.seen):
        assert seen.device.type == "cpu"
        if accum_freq == 1:
            assert seen is host[call]  # the loader's very tensor, not a copy back from the device
        else:  # each step's micro-batches concatenated, as OpenCLIP concatenates every output key
            step = call // accum_freq
            assert torch.equal(seen, torch.cat(host[step * accum_freq:(step + 1) * accum_freq]))


def test_model_called_without_the_loader_tap_is_refused(table_embedder, tokens):
    """Without the tap the proxy can only pass the device tensor on, and the embedder refuses it."""
    with torch.device(META):
        model = StubCLIP(False)
    proxy = train_loop.TokenModel(model, train_loop.TokenTap())
    out = proxy(torch.randn(len(tokens), 12).to(META), tokens.to(META))
    assert out[registry.BATCH_TOKENS].device == META
    with pytest.raises(DeviceTokensError):
        XSampleLoss(table_embedder)(**out)


# --- the finiteness guard -------------------------------------------------------------------------

@pytest.mark.parametrize("grad_scaler", [False, True])
@pytest.mark.parametrize("accum_freq", [1, 2])
def test_guard_records_a_device_loss_and_reads_it_only_at_logging_steps(table_embedder, tokens, grad_scaler,
                                                                         accum_freq):
    log_every, batches = 5, 12
    guard = FiniteLossGuard(XSampleLoss(table_embedder, **SOFTMAX_SETTINGS), 0, batches, accum_freq, log_every,
                            grad_scaler=grad_scaler)
    reads = []
    for call in range(batches * accum_freq):
        try:
            loss_scenario(guard, tokens, siglip=False)
        except (RuntimeError, NotImplementedError) as err:
            assert "meta" in str(err)
            assert call % accum_freq == accum_freq - 1  # only ever after a step's last micro-batch
            reads.append(call // accum_freq)
    # OpenCLIP logs (and reads the loss) at optimizer steps 0, 5, 10 and the epoch's last one (11)
    assert reads == [0, 5, 10, 11]
    assert guard._state.device == META  # the record stays on the device between reads


# --- token ids on a device ------------------------------------------------------------------------

def test_device_token_ids_are_refused(embedder, tokens):
    with pytest.raises(DeviceTokensError, match="CPU tensor"):
        embedder(tokens.to(META))
    with pytest.raises(DeviceTokensError):  # and through the loss, as the loop would call it
        XSampleSigLipLoss(embedder)(meta_leaf(8, 32), meta_leaf(8, 32), meta_leaf(value=10.0),
                                    meta_leaf(value=-10.0), batch_tokens=tokens.to(META))


# --- the scenarios above fail when a host read is added to their path ----------------------------

def _wrap(module, name, before):
    original = getattr(module, name)

    def wrapped(*args, **kwargs):
        before(*args, **kwargs)
        return original(*args, **kwargs)

    return wrapped


INJECTIONS = {
    # the softmax loss copies its caption embeddings back (a .cpu() of a device tensor)
    "softmax loss .cpu()": (softmax_module, "unit_captions", lambda emb: emb.cpu()),
    # the sigmoid loss reads its logit bias (.item())
    "sigmoid loss .item()": (sigmoid_module, "soft_sigmoid_loss", lambda i, t, s, b, target: b.item()),
    # the caption embeddings (on the device, from a device encoder) are listed on their way to the loss
    "caption embeddings .tolist()": (common, "to_device", lambda emb, device: emb.tolist()),
    # the token tap keys the device text tensor (.cpu() of the tensor the model got)
    "token tap .cpu()": (train_loop.TokenTap, "host_tokens", lambda self, text: text.cpu()),
    # the guard checks finiteness on the host at every call (bool())
    "guard bool()": (finite.FiniteLossGuard, "_record", lambda self, total, *a: bool(torch.isfinite(total))),
}


@pytest.mark.parametrize("injection", list(INJECTIONS))
def test_an_added_host_read_is_caught(monkeypatch, injection, tokenizer, table_embedder, tokens):
    module, name, read = INJECTIONS[injection]
    monkeypatch.setattr(module, name, _wrap(module, name, read))
    if injection.startswith("softmax"):
        scenario = lambda: loss_scenario(XSampleLoss(table_embedder), tokens, siglip=False)  # noqa: E731
    elif injection.startswith("sigmoid"):
        scenario = lambda: loss_scenario(XSampleSigLipLoss(table_embedder), tokens, siglip=True)  # noqa: E731
    elif injection.startswith("caption embeddings"):
        online = OnlineCaptionEmbeddings(TokenDecoder(tokenizer), StubEncoder(META))
        scenario = lambda: loss_scenario(XSampleLoss(online), tokens, siglip=False)  # noqa: E731
    elif injection.startswith("token tap"):
        scenario = lambda: train_loop_scenario(XSampleLoss(table_embedder), False, tokens, 1)  # noqa: E731
    else:
        guard = FiniteLossGuard(XSampleLoss(table_embedder), 0, 10, accum_freq=2)
        scenario = lambda: loss_scenario(guard, tokens, siglip=False)  # noqa: E731 (call 0: no check due)
    with pytest.raises((RuntimeError, NotImplementedError), match=HOST_READ):
        scenario()
