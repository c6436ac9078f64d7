"""``--accum-freq`` above the token tap's old fixed memory (64 texts) still hands the loss host token ids.

OpenCLIP's accumulation path forwards ``accum_freq`` micro-batches without gradient, then forwards the very
same device text tensors again with gradient; the tap must still know every one of them at the second pass
(issue 17, fault 6: with a fixed 64 the 65th and later lookups missed, the loss got device token ids and
the run crashed on CUDA). Driven here through OpenCLIP's real ``train_one_epoch`` under this package's
wrapper on the ``meta`` device, where, as on CUDA, ``texts.to(device)`` is a new tensor (on the CPU it
would be the loader's tensor itself and hide the fault). One optimizer step of 70 micro-batches of 2.
"""
import argparse

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip_train.data import DataInfo
from open_clip_train.train import train_one_epoch as stock_train_one_epoch

from xsample_openclip import registry
from xsample_openclip.patches import train_loop

META = torch.device("meta")
VOCAB, CTX, BATCH = 50, 4, 2


class TinyCLIP(nn.Module):
    def __init__(self):
        super().__init__()
        self.visual = nn.Linear(3, 8)
        self.token_embedding = nn.Embedding(VOCAB, 8)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, image=None, text=None):
        return {"image_features": F.normalize(self.visual(image), dim=-1),
                "text_features": F.normalize(self.token_embedding(text).mean(dim=1), dim=-1),
                "logit_scale": self.logit_scale.exp()}


class RecordingLoss(nn.Module):
    """A plugin loss that keeps the token ids each call gets (a stand-in for the X-Sample losses)."""

    needs_batch_tokens = True

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, image_features, text_features, logit_scale, batch_tokens=None, output_dict=False):
        self.seen.append(batch_tokens)
        loss = logit_scale * (image_features * text_features).sum()
        return {"contrastive_loss": loss} if output_dict else loss

    def begin_epoch(self, epoch, args):
        pass

    def end_epoch(self, epoch, args):
        pass

    def single_process(self):
        return self


class HostLoader:
    def __init__(self, count):
        g = torch.Generator().manual_seed(0)
        self.batches = [(torch.randn(BATCH, 3, generator=g), torch.randint(0, VOCAB, (BATCH, CTX), generator=g))
                        for _ in range(count)]
        self.num_batches, self.num_samples = count, count * BATCH

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return self.num_batches


@pytest.mark.parametrize("accum_freq", [70])
def test_accumulation_beyond_64_micro_batches_hands_host_tokens(accum_freq):
    with torch.device(META):
        model = TinyCLIP()
    loader, loss = HostLoader(accum_freq), RecordingLoss()
    assert isinstance(loss, registry.PluginLoss)
    args = argparse.Namespace(device="meta", precision="fp32", accum_freq=accum_freq, distill=False,
                              skip_scheduler=True, log_every_n_steps=1, rank=1, world_size=1, horovod=False,
                              grad_clip_norm=None, batch_size=BATCH, wandb=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_loop.wrap_train_one_epoch(stock_train_one_epoch)(
        model, {"train": DataInfo(dataloader=loader)}, loss, 0, optimizer, None, None, None, args)
    assert len(loss.seen) == accum_freq  # one loss call per micro-batch of the one step
    expected = torch.cat([texts for _, texts in loader.batches])
    for seen in loss.seen:  # every call: the step's host token ids in micro-batch order
        assert seen.device.type == "cpu"
        assert torch.equal(seen, expected)
    assert model.logit_scale.grad is not None  # the step's backward ran


def test_tap_keeps_a_whole_accumulation_step():
    """The tap alone, in the accumulation path's order: k new texts, then the same k texts again."""
    k = 130
    tap = train_loop.TokenTap(accum_freq=k)
    host = [torch.full((1, CTX), i) for i in range(k)]
    device = [h.clone() for h in host]  # the copies the model is called with
    for h, d in zip(host, device):
        tap.loader_batch(h)
        assert tap.host_tokens(d) is h
    for h, d in zip(host, device):
        assert tap.host_tokens(d) is h
