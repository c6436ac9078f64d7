"""What the X-Sample targets look like on a data set: self-mass and entropy per tau_s, at a batch size.

    python -m xsample_openclip.target_stats --model MODEL --train-data DATA --batch-size 4096
    python -m xsample_openclip.target_stats --model MODEL --train-data DATA --xsample-embeddings TABLE

The right tau_s depends on how alike the captions are: on short, varied captions tau_s 0.2 keeps ~40 %
of a target row on the sample itself, on long captions that share most words it leaves ~7 % (close to
uniform). This prints, for a sample of the data's captions and the global batch size you train with,
the mean self-mass and row entropy per tau_s, and the tau_s that ``--xsample-tau-s auto`` would choose
for a few self-masses (``targets.calibrate``). Captions are read and embedded exactly as training does
(the packaged MiniLM online, or a precomputed table).
"""
import argparse
import math
import sys

DEFAULT_TAUS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
DEFAULT_MASSES = (0.3, 0.5, 0.7)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m xsample_openclip.target_stats", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="OpenCLIP model whose tokenizer training uses")
    p.add_argument("--train-data", required=True, help="same value as open_clip_train's --train-data")
    p.add_argument("--dataset-type", default="auto", choices=["auto", "csv", "webdataset"])
    p.add_argument("--csv-caption-key", default="title")
    p.add_argument("--csv-separator", default="\t")
    p.add_argument("--batch-size", type=int, default=256,
                   help="global batch: per-GPU batch x processes x --accum-freq (default 256)")
    p.add_argument("--captions", type=int, default=2048,
                   help="captions sampled uniformly from the whole data set (default 2048, as --xsample-tau-s auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample (training's --seed; default 0)")
    p.add_argument("--xsample-encoder", default=None)
    p.add_argument("--xsample-embeddings", default=None)
    p.add_argument("--taus", default=",".join(map(str, DEFAULT_TAUS)))
    p.add_argument("--self-mass", default=",".join(map(str, DEFAULT_MASSES)))
    return p.parse_args(argv)


def embed_sample(args):
    """Unit embeddings of up to ``--captions`` training captions (as training would embed them)."""
    from open_clip import get_tokenizer

    from . import model_configs
    from .targets.flags import CAPTION_TARGETS
    from .targets.sampling import CalibrationDataError, calibration_sample

    model_configs.register()
    try:  # the sample --xsample-tau-s auto draws, streamed sources included; its refusal if it cannot
        captions = calibration_sample(args, k=args.captions).captions
    except CalibrationDataError as err:
        sys.exit(f"error: {err}")
    tokenizer = get_tokenizer(args.model)
    run = argparse.Namespace(model=args.model, xsample_embeddings=args.xsample_embeddings,
                             xsample_encoder=args.xsample_encoder, xsample_cache_size=0, device="cpu", accum_freq=1,
                             cache_dir=None, force_context_length=None)
    embedder, source = CAPTION_TARGETS.build_embedder(run, tokenizer=tokenizer)
    return embedder(tokenizer(captions)).cpu(), len(captions), source


def report(similarities, batch_size, taus, masses) -> str:
    from .targets.calibrate import stats_table

    n = similarities.shape[0]
    off = similarities[~_eye(n)]
    lines = [f"mean caption cosine (off-diagonal): {float(off.mean()):.3f}; batch {batch_size}: a uniform row puts "
             f"{1 / batch_size:.4f} on the sample itself and has entropy {math.log(batch_size):.2f} nats", "",
             "| tau_s | self-mass | row entropy (nats) | effective targets exp(H) |", "|---:|---:|---:|---:|"]
    lines += [f"| {tau:g} | {m:.3f} | {h:.2f} | {e:.1f} |" for tau, m, h, e in stats_table(similarities, batch_size, taus)]
    lines += ["", "| --xsample-self-mass | tau_s chosen by --xsample-tau-s auto |", "|---:|---:|"]
    lines += [f"| {m:g} | {_auto_tau(similarities, m, batch_size)} |" for m in masses]
    return "\n".join(lines)


def _auto_tau(similarities, self_mass, batch_size) -> str:
    """The tau_s auto would choose, or why it would refuse (a self-mass no tau_s reaches)."""
    from .targets.calibrate import UnreachableSelfMass, tau_for_self_mass

    try:
        return f"{tau_for_self_mass(similarities, self_mass, batch_size):.4g}"
    except UnreachableSelfMass as err:
        return f"refused: {'at most' if err.side == 'above' else 'at least'} {err.reachable:.3g} reachable"


def _eye(n):
    import torch

    return torch.eye(n, dtype=torch.bool)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from .targets.calibrate import similarities_of

    embeddings, count, source = embed_sample(args)
    print(f"{count} captions of {args.train_data}, embedded with {source}")
    print(report(similarities_of(embeddings), args.batch_size, [float(t) for t in args.taus.split(",")],
                 [float(m) for m in args.self_mass.split(",")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
