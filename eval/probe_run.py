"""The linear probes of one run: encode each split once (cached), fit each probe once (cached), write JSONs.

The image encoder is loaded through clip_benchmark's ``load_clip`` (as for every other evaluation) and only
when some features are missing, so re-running a comparison whose features exist loads no model. Only
``encode_image`` is called: a checkpoint whose text tower is untrained or unusable is probed like any other.
A dataset's probe trains on ``spec.train_root``'s ``train/`` split when set (e.g. the background variants
of a group, which all train on the group's training images, as ImageNet-9's protocol does), else on its own.
"""
import json
import logging
import time
from dataclasses import asdict

from . import linear_probe
from .linear_probe import Probe, ProbeSettings
from .probe_cache import ProbeCache, key_of, split_identity
from .specs import LINEAR_PROBE, SetupError

log = logging.getLogger(__name__)


class ProbeRun:
    """Linear probes of one checkpoint (``content``: its identity from ``checkpoints``) on any datasets."""

    def __init__(self, *, model, cb_model, pretrained, content, cache_folder, device, amp, batch_size,
                 num_workers, settings=None):
        self.model, self.cb_model, self.pretrained, self.content = model, cb_model, pretrained, content
        self.cache = ProbeCache(cache_folder)
        self.device, self.amp = device, amp
        self.batch_size, self.num_workers = batch_size, num_workers
        self.settings = (settings or ProbeSettings()).check()
        self._loaded = None
        self.encoded = []  # (dataset, root, split) of every split encoded here (not read from the cache)

    def _clip(self):
        if self._loaded is None:
            from clip_benchmark.models import load_clip

            model, transform, _ = load_clip("open_clip", self.cb_model, self.pretrained, None, self.device)
            self._loaded = model.eval(), transform
        return self._loaded

    def _loader(self, cb_dataset, root, split):
        import torch
        from clip_benchmark.datasets.builder import build_dataset, get_dataset_collate_fn

        _, transform = self._clip()
        dataset = build_dataset(cb_dataset, root=root, transform=transform, split=split, download=False,
                                task="linear_probe")
        if cb_dataset.startswith("wds/"):  # as clip_benchmark's run() loads wds sets
            return torch.utils.data.DataLoader(dataset.batched(self.batch_size), batch_size=None, shuffle=False,
                                               num_workers=self.num_workers)
        return torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, shuffle=False,
                                           num_workers=self.num_workers, collate_fn=get_dataset_collate_fn(cb_dataset))

    def _encode(self, cb_dataset, root, split):
        started = time.perf_counter()
        model, _ = self._clip()
        features, targets = linear_probe.encode(model, self._loader(cb_dataset, root, split), self.device, self.amp,
                                                self.settings.normalize)
        self.encoded.append((cb_dataset, root, split))
        log.info("linear probe: encoded %d images of %s (%s) in %.1f s", len(features), root, split,
                 time.perf_counter() - started)
        return features, targets

    def features(self, cb_dataset, root, split):
        """(features, targets, cache key parts) of one split, encoded at most once per checkpoint content."""
        parts = {"checkpoint": self.content, "model": self.model, "images": split_identity(cb_dataset, root, split),
                 "normalize": self.settings.normalize, "amp": bool(self.amp)}
        features, targets = self.cache.features(parts, lambda: self._encode(cb_dataset, root, split))
        return features, targets, parts

    def probe(self, cb_dataset, train_root):
        """The probe fitted on ``train_root``'s train split (weight decay searched on part of it)."""
        features, targets, parts = self.features(cb_dataset, train_root, "train")
        probe_parts = {"train_features": key_of(parts), "settings": asdict(self.settings), "amp": bool(self.amp)}
        state = self.cache.probe(probe_parts, lambda: linear_probe.fit(features, targets, self.settings,
                                                                       self.device, self.amp).state())
        return Probe.from_state(state)

    def evaluate(self, spec, output):
        """Fit (or reuse) the probe for ``spec`` and write its result JSON to ``output``."""
        train_root = spec.train_root or spec.root
        probe = self.probe(spec.cb_dataset, train_root)
        features, targets, _ = self.features(spec.cb_dataset, spec.root, "test")
        if int(targets.max()) >= probe.layer.out_features:
            raise SetupError(f"{spec.name}: test label {int(targets.max())} has no class in the probe's training "
                             f"split {train_root}/train (labels 0..{probe.layer.out_features - 1})")
        metrics = linear_probe.score(probe, features, targets, self.settings, self.device, self.amp)
        result = {"dataset": spec.name, "model": self.cb_model, "pretrained": self.pretrained, "task": LINEAR_PROBE,
                  "metrics": metrics, "language": "en",
                  "protocol": {**linear_probe.settings_record(self.settings), "train_root": train_root,
                               "n_train": probe.n_train, "n_val": probe.n_val, "n_test": len(targets),
                               "weight_decay_search": probe.search, "device": self.device}}
        with open(output, "w") as f:
            json.dump(result, f)
        log.info("linear probe %s: top-1 %.2f %% (weight decay %g)", spec.name, 100 * metrics["lp_acc1"],
                 probe.weight_decay)
        return result
