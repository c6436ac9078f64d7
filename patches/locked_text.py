"""``--xsample-locked-text-cache``: OpenCLIP's ``HFTextEncoder`` with its locked transformer in eval mode
and a cache of pooled caption features (the flag and why: xsample_openclip/locked_text.py).

``HFTextEncoder.forward`` (open_clip/hf_model.py, the same in 3.0.0-3.3.x; version.py gates it) is
``proj(pooler(transformer(ids, mask), mask))`` with ``mask = ids != pad``. The cached forward replaces
it on the model's own tower instance (no parameter or buffer is added, so checkpoints are unchanged):
each caption, keyed by its token ids, is pooled once by the transformer in eval mode without gradient,
and the projection runs on the stored features every call, so its gradient is the uncached one's. A
caption is pooled alone or with the other new captions of its batch; its features equal a whole-batch
pass up to float rounding (padding is per caption: ``tests/test_locked_text_cache.py``). Keys are read on
the host: on a GPU that is one small device-to-host copy of the batch's token ids per step.
"""
import logging
from collections import OrderedDict

import torch

from xsample_openclip.locked_text import FLAG


class CachedLockedText:
    """Pooled features of a locked HF text transformer, computed once per caption (least recently used
    dropped beyond ``capacity``); ``forward`` stands in for the tower's own."""

    def __init__(self, tower, capacity: int):
        self.tower = tower
        self.capacity = capacity
        self._features: "OrderedDict[bytes, torch.Tensor]" = OrderedDict()
        self.hits = 0
        self.misses = 0

    def forward(self, ids):
        return self.tower.proj(self.pooled(ids))

    def pooled(self, ids) -> torch.Tensor:
        keys = [row.tobytes() for row in ids.detach().cpu().numpy()]
        new = {}
        for i, key in enumerate(keys):
            if key in self._features:
                self._features.move_to_end(key)
            elif key not in new:
                new[key] = i
        self.misses += len(new)
        self.hits += len(keys) - len(new)
        if new:
            for key, row in zip(new, self._pool(ids[list(new.values())])):
                self._features[key] = row
        out = torch.stack([self._features[key] for key in keys])
        while len(self._features) > self.capacity:
            self._features.popitem(last=False)
        return out

    def _pool(self, ids) -> torch.Tensor:
        """The transformer's pooled features in eval mode (whatever mode the model is in), no gradient."""
        tower, transformer = self.tower, self.tower.transformer
        was_training = transformer.training
        transformer.eval()
        try:
            with torch.no_grad():
                mask = (ids != tower.config.pad_token_id).long()
                return tower.pooler(transformer(input_ids=ids, attention_mask=mask), mask)
        finally:
            transformer.train(was_training)

    def epoch_summary(self) -> str:
        line = (f"Locked text cache: {self.hits} captions from the cache, {self.misses} through the transformer "
                f"this epoch; {len(self._features)} kept (at most {self.capacity})")
        self.hits = self.misses = 0
        return line


def install(model, capacity: int) -> CachedLockedText:
    """Give the model's HF text tower the cached forward; a tower it cannot serve is refused, naming why."""
    from open_clip.hf_model import HFTextEncoder
    from open_clip_train.train import unwrap_model

    tower = getattr(unwrap_model(model), "text", None)
    if not isinstance(tower, HFTextEncoder):
        raise SystemExit(f"error: {FLAG}: the model's text tower is {type(tower).__name__}, not a Hugging Face "
                         "text encoder (HFTextEncoder); the cache serves those only: drop the flag")
    if tower.output_tokens:
        raise SystemExit(f"error: {FLAG}: this text tower also returns its token features (a captioning "
                         "model); the cache keeps pooled features only: drop the flag")
    learning = [name for name, p in tower.transformer.named_parameters() if p.requires_grad]
    if learning:
        raise SystemExit(f"error: {FLAG}: {len(learning)} text-transformer tensors still learn (e.g. "
                         f"{learning[0]}); the cache needs every one locked: --lock-text "
                         "--lock-text-freeze-layer-norm without --lock-text-unlocked-layers")
    cache = CachedLockedText(tower, capacity)
    tower.forward = cache.forward  # this instance only: no parameter, buffer or state-dict key changes
    logging.info(f"{FLAG} {capacity}: the locked text transformer runs in eval mode, each caption once")
    return cache
