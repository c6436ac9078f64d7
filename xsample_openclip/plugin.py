"""``--loss xsample``: the X-Sample loss's flags, their checks, and how to build it from OpenCLIP's args."""
import logging
from pathlib import Path

from .encoders import DEFAULT_ENCODER

DEFAULTS = {
    "xsample_tau_s": 0.1,
    "xsample_clip_weight": 0.0,
    "xsample_image_weight": 0.0,
    "xsample_encoder": DEFAULT_ENCODER,
    "xsample_embeddings": None,
    "xsample_cache_size": 100_000,
}


class XSampleLossPlugin:
    """Entry point ``xsample`` of the ``open_clip_train.losses`` group."""

    name = "xsample"

    @staticmethod
    def add_arguments(parser):
        group = parser.add_argument_group("X-Sample loss (used with --loss xsample)")
        group.add_argument(
            "--xsample-tau-s", type=float, default=DEFAULTS["xsample_tau_s"],
            help="Temperature of the row softmax over caption cosine similarities that makes the "
                 "soft target; smaller is sharper (tau_s -> 0 with distinct captions is CLIP's target).")
        group.add_argument(
            "--xsample-clip-weight", type=float, default=DEFAULTS["xsample_clip_weight"],
            help="Weight w in [0, 1] of CLIP's hard (identity) target mixed into the soft target: "
                 "target = (1 - w) * softmax(S / tau_s) + w * I.")
        group.add_argument(
            "--xsample-image-weight", type=float, default=DEFAULTS["xsample_image_weight"],
            help="Weight of an extra image-image X-Sample term (the same soft targets, self-pairs "
                 "masked); 0 turns it off.")
        group.add_argument(
            "--xsample-encoder", default=DEFAULTS["xsample_encoder"],
            help=f"Frozen caption encoder: '{DEFAULT_ENCODER}' (the packaged all-MiniLM-L6-v2) or a "
                 "local sentence-transformers folder. Never downloaded.")
        group.add_argument(
            "--xsample-embeddings", default=DEFAULTS["xsample_embeddings"],
            help="Folder of precomputed caption embeddings (python -m xsample_openclip.precompute); "
                 "replaces the online encoder.")
        group.add_argument(
            "--xsample-cache-size", type=int, default=DEFAULTS["xsample_cache_size"],
            help="Captions whose embeddings the online encoder keeps in memory (LRU); 0 disables.")

    @staticmethod
    def validate(args):
        problems = []
        if args.siglip:
            problems.append("--loss xsample is a softmax loss and cannot be combined with --siglip "
                            "(a sigmoid loss); drop --siglip or use --loss clip")
        if args.distill_model or args.distill_pretrained:
            problems.append("--loss xsample does not support distillation (--distill-model/"
                            "--distill-pretrained); drop them or use --loss clip")
        if "coca" in args.model.lower():
            problems.append(f"--loss xsample does not support CoCa models ({args.model}): their loss "
                            "adds a captioning term; use a CLIP model or --loss clip")
        if args.torchscript or args.trace:
            problems.append("--loss xsample needs the model's dict output; drop --torchscript/--trace")
        if args.horovod:
            problems.append("--loss xsample is not tested with --horovod; launch with torchrun instead")
        if args.dataset_type == "synthetic":
            problems.append("--dataset-type synthetic gives every sample the same caption, so X-Sample "
                            "targets are uniform and nothing is learned; use real captions")
        if not args.xsample_tau_s > 0:
            problems.append(f"--xsample-tau-s must be > 0, got {args.xsample_tau_s}")
        if not 0.0 <= args.xsample_clip_weight <= 1.0:
            problems.append(f"--xsample-clip-weight must be in [0, 1], got {args.xsample_clip_weight}")
        if not args.xsample_image_weight >= 0.0:
            problems.append(f"--xsample-image-weight must be >= 0, got {args.xsample_image_weight}")
        if args.xsample_cache_size < 0:
            problems.append(f"--xsample-cache-size must be >= 0, got {args.xsample_cache_size}")
        if args.xsample_embeddings is not None:
            if not Path(args.xsample_embeddings).is_dir():
                problems.append(f"--xsample-embeddings {args.xsample_embeddings!r} does not exist; build it "
                                "with `python -m xsample_openclip.precompute`")
        else:
            try:
                from .encoders import resolve_encoder_path
                resolve_encoder_path(args.xsample_encoder)
            except FileNotFoundError as err:
                problems.append(str(err))
        return problems

    @staticmethod
    def build(args):
        from open_clip import get_tokenizer

        from .captions import OnlineCaptionEmbeddings, TableCaptionEmbeddings, TokenDecoder
        from .loss import XSampleLoss

        if args.xsample_embeddings is not None:
            from .table import EmbeddingTable

            table = EmbeddingTable(args.xsample_embeddings)
            embedder = TableCaptionEmbeddings(table)
            source = f"table {args.xsample_embeddings} ({len(table)} captions, {table.meta.get('encoder')})"
        else:
            from .encoders import SentenceEncoder

            tokenizer = get_tokenizer(args.model, cache_dir=args.cache_dir,
                                      context_length=args.force_context_length)
            encoder = SentenceEncoder(args.xsample_encoder, device=args.device)
            embedder = OnlineCaptionEmbeddings(TokenDecoder(tokenizer), encoder, args.xsample_cache_size)
            source = f"online encoder {encoder.name} on {args.device}"
        logging.info(
            f"Loss: xsample (X-Sample contrastive loss): tau_s={args.xsample_tau_s}, "
            f"clip_weight={args.xsample_clip_weight}, image_weight={args.xsample_image_weight}, "
            f"caption targets from {source}")
        return XSampleLoss(
            embedder,
            tau_s=args.xsample_tau_s,
            clip_weight=args.xsample_clip_weight,
            image_weight=args.xsample_image_weight,
            local_loss=args.local_loss,
            gather_with_grad=args.gather_with_grad,
            rank=args.rank,
            world_size=args.world_size,
            use_horovod=args.horovod,
        )
