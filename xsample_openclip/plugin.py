"""``--loss xsample``: the X-Sample loss's flags, their checks, and how to build it from OpenCLIP's args."""
import json
import logging
from pathlib import Path

from .encoders import DEFAULT_ENCODER

DEFAULTS = {
    "xsample_tau_s": 0.2,  # best of the demo sweep (README, "The demo")
    "xsample_clip_weight": 0.0,
    "xsample_image_weight": 0.0,
    "xsample_encoder": None,  # the packaged MiniLM, or the table's encoder with --xsample-embeddings
    "xsample_embeddings": None,
    "xsample_cache_size": 100_000,
    "xsample_check_captions": 10_000,
}

#: Table path -> summary of its start-up check, logged by ``build`` once logging is set up.
_TABLE_CHECKS = {}


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
            help=f"Frozen caption encoder: '{DEFAULT_ENCODER}' (the packaged all-MiniLM-L6-v2, used when "
                 "the flag is absent) or a local sentence-transformers folder. Never downloaded. With "
                 "--xsample-embeddings the table's encoder is used; if this flag is given too, it must "
                 "be the table's encoder.")
        group.add_argument(
            "--xsample-embeddings", default=DEFAULTS["xsample_embeddings"],
            help="Folder of precomputed caption embeddings (python -m xsample_openclip.precompute); "
                 "replaces the online encoder.")
        group.add_argument(
            "--xsample-cache-size", type=int, default=DEFAULTS["xsample_cache_size"],
            help="Captions whose embeddings the online encoder keeps in memory (LRU); 0 disables.")
        group.add_argument(
            "--xsample-check-captions", type=int, default=DEFAULTS["xsample_check_captions"],
            metavar="N",
            help="At start-up, look up to N training captions up in --xsample-embeddings and refuse to "
                 "start if any is missing. They are read from the local sources of --train-data, spread "
                 "over them (first, middle, quarters, ...; the first captions of each); remote sources "
                 "are not read. -1 checks every caption (a full pass), 0 skips the check.")
        group.add_argument(
            "--xsample-allow-changed-settings", action="store_true",
            help="Let --resume continue a run with other --loss/--xsample-* settings than its "
                 "params.txt records (refused otherwise); the changes are logged.")

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
                problems.extend(table_problems(args))
        else:
            try:
                from .encoders import resolve_encoder_path
                resolve_encoder_path(args.xsample_encoder or DEFAULT_ENCODER)
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
            tokenizer = get_tokenizer(args.model, cache_dir=args.cache_dir,
                                      context_length=args.force_context_length)
            embedder = TableCaptionEmbeddings(table, _decoder_or_none(tokenizer))
            source = f"table {args.xsample_embeddings} ({len(table)} captions, {table.meta.get('encoder')})"
            if args.xsample_embeddings in _TABLE_CHECKS:
                logging.info(_TABLE_CHECKS.pop(args.xsample_embeddings))
        else:
            from .encoders import SentenceEncoder

            tokenizer = get_tokenizer(args.model, cache_dir=args.cache_dir,
                                      context_length=args.force_context_length)
            encoder = SentenceEncoder(args.xsample_encoder or DEFAULT_ENCODER, device=args.device)
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


def _decoder_or_none(tokenizer):
    from .captions import TokenDecoder

    try:
        return TokenDecoder(tokenizer)
    except TypeError:
        return None


def _is_rank_zero() -> bool:
    """At argument parsing (before init_distributed_device): the launcher's global rank is 0."""
    from open_clip_train.distributed import world_info_from_env

    return world_info_from_env()[1] == 0


def _encoder_identity(spec):
    """(name as precompute records it, width) of an --xsample-encoder value; raises if not local."""
    from .encoders import resolve_encoder_path

    path = resolve_encoder_path(spec)
    name = "all-MiniLM-L6-v2" if spec == DEFAULT_ENCODER else str(path)
    width = json.loads((path / "config.json").read_text()).get("hidden_size")
    return name, width


def table_problems(args):
    """Start-up checks of ``--xsample-embeddings`` against this run: each mismatch is a refusal with counts.

    - the table opens and is consistent (keys, rows and meta.json agree);
    - it was built with this model's tokenizer and context length (keys are hashes of token ids, so
      another tokenizer can match no caption);
    - ``--xsample-encoder``, if given, is the table's encoder, with the same width;
    - up to 4096 evenly spaced rows are finite unit vectors;
    - ``--xsample-check-captions`` training captions are all in the table (rank 0 only; the others
      wait in ``init_process_group`` and are stopped by the launcher if rank 0 refuses).
    """
    from .table import EmbeddingTable

    path = args.xsample_embeddings
    try:
        table = EmbeddingTable(path)
    except (FileNotFoundError, ValueError) as err:
        return [str(err)]
    meta, problems = table.meta, []

    def rebuild(encoder=None):
        flag = f" --encoder {encoder}" if encoder else ""
        return (f"rebuild it with `python -m xsample_openclip.precompute --model {args.model} "
                f"--train-data DATA{flag} --out DIR`")

    tokenizer = None
    try:
        from open_clip import get_tokenizer

        tokenizer = get_tokenizer(args.model, cache_dir=args.cache_dir, context_length=args.force_context_length)
    except Exception:  # noqa: BLE001 - an unknown model is OpenCLIP's own error, reported by main
        pass
    if tokenizer is not None:
        kind = type(tokenizer).__name__
        context = int(getattr(tokenizer, "context_length", 0) or 0)
        built_kind, built_context = meta.get("tokenizer"), meta.get("context_length")
        if (built_kind and built_kind != kind) or (built_context and int(built_context) != context):
            problems.append(
                f"--xsample-embeddings {path} was built for model {meta.get('model')!r} ({built_kind}, "
                f"context length {built_context}), but --model {args.model} tokenizes with {kind}, context "
                f"length {context}: none of its {len(table)} keys can match a training caption; {rebuild()}")

    if args.xsample_encoder is not None:
        try:
            name, width = _encoder_identity(args.xsample_encoder)
        except FileNotFoundError as err:
            problems.append(str(err))
        else:
            built = meta.get("encoder")
            if built != name or (width and int(width) != table.dim):
                problems.append(
                    f"--xsample-encoder {args.xsample_encoder} ({name}, width {width}) is not the encoder "
                    f"--xsample-embeddings {path} was built with ({built}, width {table.dim}); drop "
                    f"--xsample-encoder to use the table's encoder, or {rebuild(args.xsample_encoder)}")

    checked, bad = table.bad_rows()
    if bad:
        problems.append(f"--xsample-embeddings {path}: {bad} of {checked} checked rows are not finite unit "
                        f"vectors (NaN, inf or wrong norm): the table is corrupt; {rebuild()}")

    limit = args.xsample_check_captions
    if problems or limit == 0 or tokenizer is None or not args.train_data or not _is_rank_zero():
        return problems
    from .precompute import check_table, sample_captions

    captions, report = sample_captions(args.train_data, limit, args.dataset_type, args.csv_caption_key,
                                       args.csv_separator)
    if not captions:
        _TABLE_CHECKS[path] = (f"--xsample-embeddings {path}: no training caption could be read locally "
                               f"({report['sources']} source(s), {report['remote_or_missing']} remote or "
                               "missing); captions were not checked against the table")
        return problems
    result = check_table(table, iter(captions), tokenizer)
    unreadable = len(report.get("unreadable_shards", []))
    read = (f"{result['captions']} training captions checked ({result['distinct']} distinct, from "
            f"{report['sources_read']} of {report['sources']} source(s)"
            + (f", {unreadable} of them unreadable" if unreadable else "")
            + f"; --xsample-check-captions {limit})")
    if result["missing_distinct"]:
        problems.append(
            f"--xsample-embeddings {path} is missing {result['missing_distinct']} of the {result['distinct']} "
            f"distinct captions among {read}; it was built from other data ({len(table)} captions, "
            f"{meta.get('captions_read')} read, model {meta.get('model')!r}): {rebuild()} over this "
            "--train-data. (--xsample-check-captions 0 skips this check; training would then stop at "
            "the first batch with a missing caption)")
    else:
        _TABLE_CHECKS[path] = f"--xsample-embeddings {path} has all {read}"
    return problems
