"""clip_benchmark 1.6.2's linear probe on any device (CPU included): the protocol, without its CUDA lines.

clip_benchmark 1.6.2's ``metrics/linear_probe.evaluate`` asserts ``device == 'cuda'``, and its ``train``
moves the probe and every batch with ``.cuda()`` inside ``DataParallel``; nothing else in it needs a GPU.
This adapter re-uses its device-agnostic functions (``Featurizer``, ``FeatureDataset``, ``cosine_lr``,
``accuracy``) and re-writes only what calls the CUDA lines (``train``; ``find_peak`` and the search of
``evaluate``, which call that ``train``), statement for statement otherwise (``infer`` too, to drop the
progress bar it draws on each of the 20 calls):

- features: ``Featurizer`` (``encode_image``, L2-normalised), so a model whose text tower is untrained
  or unusable is probed the same way as any other;
- the probe: ``torch.nn.Linear`` trained with AdamW, lr 0.1, 10 epochs, batch size 64, cosine schedule
  without warm-up, cross-entropy, seed 0 (the defaults of clip_benchmark's CLI);
- weight decay: searched on a validation split drawn from the *training* images (``val_proportion``,
  seeded), over ``logspace(-6, 2, 97)``: the 7 points ``logspace(-6, 2, 7)``, then 4 refinements of
  [peak - s, peak, peak + s] for s = 8, 4, 2, 1 (ties keep the earlier point); then the probe is
  trained again on train + val with the best weight decay and scored on the test split.
- scores: ``lp_acc1``, ``lp_acc5`` (NaN below 5 classes), ``lp_mean_per_class_recall``, as clip_benchmark.

One difference from clip_benchmark's CLI, on purpose: given no ``--val_split``/``--val_proportion`` it
skips the search and trains with weight decay 0; here the split is always drawn (20 % by default),
which is its ``--val_proportion 0.2`` behaviour. (And the number of classes counts the validation labels
too, where clip_benchmark would fail on a class seen only in validation.) The tests run clip_benchmark's
own ``evaluate`` on the same features and split: same weight decay, same scores. Math only: no files
(``probe_cache`` keeps features and fitted probes).
"""
import importlib.metadata
import logging
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .specs import SetupError

log = logging.getLogger(__name__)

#: The clip_benchmark release whose ``metrics/linear_probe.py`` this module follows statement for statement.
CLIP_BENCHMARK_VERSION = "1.6.2"

WD_GRID = np.logspace(-6, 2, num=97).tolist()  # clip_benchmark's wd_list
WD_INIT = [i for i, v in enumerate(WD_GRID) if v in np.logspace(-6, 2, num=7).tolist()]  # its wd_init_idx


@dataclass(frozen=True)
class ProbeSettings:
    """clip_benchmark CLI defaults (--fewshot_lr, --fewshot_epochs, --batch_size, --seed, --normalize),
    plus the share of training images held out for the weight-decay search."""

    lr: float = 0.1
    epochs: int = 10
    batch_size: int = 64
    seed: int = 0
    normalize: bool = True
    val_proportion: float = 0.2

    def check(self):
        if not 0 < self.val_proportion < 1:
            raise SetupError(f"linear probe: val_proportion must be in (0, 1), got {self.val_proportion}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise SetupError(f"linear probe: epochs, batch_size and lr must be positive, got {self}")
        return self


@dataclass
class Probe:
    """A fitted probe: its linear layer (on CPU), the weight decay chosen and how it was chosen."""

    layer: torch.nn.Linear
    weight_decay: float
    search: list  # [(weight decay, validation top-1 as a fraction), ...] in the order evaluated
    n_train: int
    n_val: int

    def state(self):
        return {"layer": self.layer.state_dict(), "weight_decay": self.weight_decay, "search": self.search,
                "n_train": self.n_train, "n_val": self.n_val,
                "shape": (self.layer.in_features, self.layer.out_features)}

    @classmethod
    def from_state(cls, state):
        layer = torch.nn.Linear(*state["shape"])
        layer.load_state_dict(state["layer"])
        return cls(layer, state["weight_decay"], [tuple(s) for s in state["search"]], state["n_train"],
                   state["n_val"])


def check_clip_benchmark():
    """Refuse another clip_benchmark release: this adapter mirrors 1.6.2's code and must be re-checked."""
    version = importlib.metadata.version("clip_benchmark")
    if version != CLIP_BENCHMARK_VERSION:
        raise SetupError(
            f"eval.linear_probe mirrors clip_benchmark {CLIP_BENCHMARK_VERSION}'s metrics/linear_probe.py, but "
            f"clip_benchmark {version} is installed: compare its train/find_peak/evaluate with this module, "
            f"update it and CLIP_BENCHMARK_VERSION, or install clip_benchmark=={CLIP_BENCHMARK_VERSION}")


def encode(model, loader, device, amp, normalize=True):
    """(features on CPU, targets) of every batch: clip_benchmark's ``Featurizer`` without DataParallel."""
    from clip_benchmark.metrics.linear_probe import Featurizer

    featurizer = Featurizer(model, normalize).to(device)
    features, targets = [], []
    with torch.no_grad():
        for images, target in loader:
            with torch.autocast(device, enabled=amp):
                features.append(featurizer(images.to(device)).float().cpu())
            targets.append(torch.as_tensor(target))
    if not features:
        raise SetupError("linear probe: a split has no images")
    return torch.cat(features), torch.cat(targets).long()


def _loader(features, targets, batch_size, shuffle):
    from clip_benchmark.metrics.linear_probe import FeatureDataset

    # In-memory tensors: worker processes would only add start-up time (the batches are the same).
    return torch.utils.data.DataLoader(FeatureDataset(features, targets), batch_size=batch_size, shuffle=shuffle)


def train(features, targets, n_classes, weight_decay, settings, device, amp):
    """clip_benchmark's ``train``, minus ``.cuda()``/``DataParallel``: same seed, optimiser, schedule, loop."""
    from clip_benchmark.metrics.linear_probe import cosine_lr

    loader = _loader(features, targets, settings.batch_size, shuffle=True)
    torch.manual_seed(settings.seed)
    model = torch.nn.Linear(features.shape[1], n_classes).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=weight_decay)
    criterion = torch.nn.CrossEntropyLoss()
    scheduler = cosine_lr(optimizer, settings.lr, 0., settings.epochs * len(loader))
    for epoch in range(settings.epochs):
        for i, (x, y) in enumerate(loader):
            x, y = x.to(device), y.to(device)
            scheduler(i + epoch * len(loader))
            optimizer.zero_grad()
            with torch.autocast(device, enabled=amp):
                loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
    return model


def predict(model, features, targets, settings, device, amp):
    """(logits, targets): clip_benchmark's ``infer`` without its progress bar (it draws one per call)."""
    loader = _loader(features, targets, settings.batch_size, shuffle=False)
    logits, true = [], []
    with torch.no_grad():
        for x, y in loader:
            with torch.autocast(device, enabled=amp):
                logits.append(model(x.to(device)).cpu())
            true.append(y)
    return torch.cat(logits), torch.cat(true)


def top1(logits, targets):
    from clip_benchmark.metrics.zeroshot_classification import accuracy

    return accuracy(logits.float(), targets.float(), topk=(1,))[0]


def find_peak(idxs, train_split, val_split, n_classes, settings, device, amp, search):
    """clip_benchmark's ``find_peak``: the index in ``idxs`` with the best validation top-1 (ties: earliest)."""
    best_wd_idx, max_acc = 0, 0
    for idx in idxs:
        model = train(*train_split, n_classes, WD_GRID[idx], settings, device, amp)
        acc1 = top1(*predict(model, *val_split, settings, device, amp))
        search.append((WD_GRID[idx], float(acc1)))
        log.debug("linear probe: validation top-1 %.2f %% with weight decay %g", acc1, WD_GRID[idx])
        if max_acc < acc1:
            best_wd_idx, max_acc = idx, acc1
    return best_wd_idx


def search_weight_decay(train_split, val_split, n_classes, settings, device, amp):
    """(best weight decay, [(wd, val top-1), ...]): the 7-point search and the refinements of ``evaluate``."""
    search = []
    peak_idx = find_peak(WD_INIT, train_split, val_split, n_classes, settings, device, amp, search)
    step_span = 8
    while step_span > 0:
        left, right = max(peak_idx - step_span, 0), min(peak_idx + step_span, len(WD_GRID) - 1)
        peak_idx = find_peak([left, peak_idx, right], train_split, val_split, n_classes, settings, device, amp,
                             search)
        step_span //= 2
    return WD_GRID[peak_idx], search


def split_train_val(n, settings):
    """(train indices, val indices): a seeded random split of ``n`` training images, as random_split does."""
    n_val = math.floor(n * settings.val_proportion)
    if n_val < 1 or n - n_val < 1:
        raise SetupError(f"linear probe: {n} training images cannot give a validation split of "
                         f"{settings.val_proportion:.0%} and a training split (use more training images)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(settings.seed))
    return order[n_val:], order[:n_val]


def fit(features, targets, settings, device="cpu", amp=False):
    """Search the weight decay on a validation split of (features, targets), then train on all of them."""
    settings.check()
    started = time.perf_counter()
    train_idx, val_idx = split_train_val(len(features), settings)
    n_classes = int(targets.max()) + 1
    torch.manual_seed(settings.seed)
    train_idx = train_idx[torch.randperm(len(train_idx))]  # evaluate()'s fewshot_k = -1 permutation
    train_split = (features[train_idx], targets[train_idx])
    val_split = (features[val_idx], targets[val_idx])
    best_wd, search = search_weight_decay(train_split, val_split, n_classes, settings, device, amp)
    everything = (torch.cat([train_split[0], val_split[0]]), torch.cat([train_split[1], val_split[1]]))
    layer = train(*everything, n_classes, best_wd, settings, device, amp).cpu()
    log.info("linear probe: weight decay %g chosen on %d validation images (%d trainings, %.1f s)",
             best_wd, len(val_idx), len(search) + 1, time.perf_counter() - started)
    return Probe(layer, best_wd, search, len(train_idx), len(val_idx))


def score(probe, features, targets, settings, device="cpu", amp=False):
    """clip_benchmark's linear-probe metrics of ``probe`` on (features, targets)."""
    from sklearn.metrics import balanced_accuracy_score

    from clip_benchmark.metrics.zeroshot_classification import accuracy

    logits, target = predict(probe.layer.to(device), features, targets, settings, device, amp)
    probe.layer.cpu()
    pred = logits.argmax(axis=1)
    if target.max() >= 5:
        acc1, acc5 = accuracy(logits.float(), target.float(), topk=(1, 5))
    else:
        acc1, = accuracy(logits.float(), target.float(), topk=(1,))
        acc5 = float("nan")
    return {"lp_acc1": acc1, "lp_acc5": acc5, "lp_mean_per_class_recall": balanced_accuracy_score(target, pred),
            "weight_decay": probe.weight_decay, "epochs": settings.epochs, "seed": settings.seed,
            "fewshot_k": -1, "normalized": settings.normalize}


def settings_record(settings):
    return {**asdict(settings), "wd_grid": "logspace(-6, 2, 97)", "optimizer": "AdamW", "schedule": "cosine",
            "clip_benchmark": CLIP_BENCHMARK_VERSION}
