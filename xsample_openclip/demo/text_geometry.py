"""How much of X-Sample's soft target a model with a locked pretrained text tower already has.

    python -m xsample_openclip.demo.text_geometry --data OUT/data/emoji-eval4x-seed0-64px/train.csv \
        --runs OUT/logs/clip-s0 OUT/logs/xsample-s0 OUT/logs/soft-s0        (docs/lit-regime.md)

With a locked text tower (docs/lit-regime.md) the text embedding of a caption is ``t = normalize(P m)``,
``m`` the frozen MiniLM features and ``P`` the learned projection. An image embedded exactly at its
caption's text embedding gets the logits ``s * t_i . t_j`` (``s`` the learned logit scale), so the
softmax of those over a batch is the best a perfect image tower can give: its diagonal, the mass on an
image's own caption, is the most sharply the model can tell its captions apart. CLIP's one-hot target asks
for 1 there; X-Sample's target for ``w + (1 - w) softmax_j(S_ij / tau_s)_i``, with ``S`` MiniLM's cosines.
If the text side's own self-mass already sits near X-Sample's, the two targets ask for much the same
image tower.

For each run's final checkpoint, over random training batches (images drawn without replacement, as
OpenCLIP's loader does within an epoch): the logit scale, the text side's self-mass, and how closely the
projected cosines ``t_i . t_j`` follow MiniLM's ``S_ij`` (Pearson correlation over pairs of distinct
captions); and, once, X-Sample's target self-mass at the τ_s that an X-Sample run among ``--runs``
recorded (its params.txt), for ``w`` = 0.5 (the default) and 0 (the pure soft target).
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Dict, List

import torch


def final_checkpoint(run: Path, params: Dict[str, str]) -> Path:
    return run / "checkpoints" / f"epoch_{params['epochs']}.pt"


def batches(n: int, batch_size: int, count: int, seed: int) -> List[torch.Tensor]:
    """``count`` batches of image indices, each drawn without replacement."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=g)[:batch_size] for _ in range(count)]


def self_mass(unit: torch.Tensor, index: List[torch.Tensor], scale: float) -> float:
    """Mean diagonal of softmax_j(scale * u_i . u_j) over the batches (``unit``: one row per image)."""
    masses = []
    for idx in index:
        u = unit[idx]
        masses.append(torch.softmax(scale * u @ u.T, dim=1).diagonal().mean())
    return float(torch.stack(masses).mean())


def pair_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of the pairwise cosines of two unit embeddings of the same distinct captions."""
    i, j = torch.triu_indices(len(a), len(a), offset=1)
    x, y = (a @ a.T)[i, j].double(), (b @ b.T)[i, j].double()
    return float(torch.corrcoef(torch.stack([x, y]))[0, 1])


def text_features(run: Path, params: Dict[str, str], captions: List[str]) -> tuple:
    """(unit text embeddings of ``captions``, logit scale) of the run's final checkpoint, in eval mode."""
    import open_clip

    from .. import model_configs

    model_configs.register()
    model = open_clip.create_model(params["model"], pretrained=str(final_checkpoint(run, params))).eval()
    tokenizer = open_clip.get_tokenizer(params["model"])
    with torch.no_grad():
        feats = torch.cat([model.encode_text(tokenizer(captions[k:k + 256]), normalize=True)
                           for k in range(0, len(captions), 256)])
        return feats.float(), float(model.logit_scale.exp())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the runs' training CSV (tab-separated, column 'title')")
    p.add_argument("--runs", nargs="+", required=True, help="OpenCLIP run folders (params.txt, checkpoints/)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from ..patches.resume import read_params
    from ..targets.encoders import SentenceEncoder

    with open(args.data, newline="", encoding="utf-8") as f:
        titles = [row["title"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    distinct = sorted(set(titles))
    position = {c: k for k, c in enumerate(distinct)}
    of_image = torch.tensor([position[c] for c in titles])
    index = batches(len(titles), args.batch_size, args.batches, args.seed)
    minilm = torch.nn.functional.normalize(SentenceEncoder("minilm").encode(distinct).float(), dim=-1)
    runs = [(Path(r), read_params(Path(r) / "params.txt")) for r in args.runs]
    print(f"{len(titles)} images, {len(distinct)} distinct captions; {args.batches} batches of {args.batch_size}")
    taus = [float(params["xsample_tau_s"]) for _, params in runs
            if params.get("loss") == "xsample" and "xsample_tau_s" in params]
    if taus:
        soft = self_mass(minilm[of_image], index, 1 / taus[0])
        print(f"X-Sample target self-mass at tau_s {taus[0]:.4g}: {soft:.3f} (pure soft, w = 0), "
              f"{0.5 + 0.5 * soft:.3f} (default mix, w = 0.5)")
    print("| run | loss | logit scale | text-side self-mass | cosine correlation with MiniLM |")
    print("|---|---|---:|---:|---:|")
    for run, params in runs:
        feats, scale = text_features(run, params, distinct)
        mass = self_mass(feats[of_image], index, scale)
        print(f"| {run.name} | {params.get('loss', 'clip')} {params.get('xsample_clip_weight', '')} | {scale:.2f} "
              f"| {mass:.3f} | {pair_correlation(feats, minilm):.3f} |")


if __name__ == "__main__":
    main()
