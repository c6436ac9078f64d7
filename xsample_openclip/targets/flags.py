"""The ``--xsample-*`` flags both X-Sample losses share, their checks, and the caption embedder they build.

Written once, used by ``--loss xsample`` and ``--loss xsample-siglip`` alike (``plugins.py``):
- ``validate``: the flags alone (every rank, at argument parsing);
- ``startup``: the encoder or table exists and fits the run, a sample of training captions is in the
  table, and ``--xsample-tau-s auto`` is calibrated (rank 0 once, after the process group exists; the
  loop hands every rank the result);
- ``build_embedder``: token ids to caption embeddings, online or from the table.
"""
import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional

from ..registry import ALLOW_CHANGES_FLAG, StartupResult
from .encoders import DEFAULT_ENCODER, resolve_encoder_path
from .resume_tau import CALIBRATION_RECORD, GIVEN, calibration_record, resume_decision

AUTO = "auto"
#: Captions sampled (uniformly, seeded by --seed: ``sampling.py``) from the training data to calibrate
#: ``--xsample-tau-s auto``.
CALIBRATION_CAPTIONS = 2048
#: The most training captions ``--xsample-check-captions`` may read at start-up; a full check is the
#: separate command ``python -m xsample_openclip.precompute --check``.
MAX_CHECK_CAPTIONS = 1_000_000


def tau_s_value(text: str):
    """``--xsample-tau-s``: a positive number, or ``auto``."""
    if text == AUTO:
        return AUTO
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or '{AUTO}', got {text!r}") from None


class CaptionTargetFlags:
    title = "X-Sample caption targets (--loss xsample, --loss xsample-siglip and --loss xclr)"
    #: Settings that change the targets: a resumed run must keep them.
    kept = ("xsample_tau_s", "xsample_self_mass", "xsample_encoder", "xsample_embeddings")
    #: tau_s auto at self-mass 0.7: chosen on the validation splits of both demo data sets (docs/validation.md)
    defaults = {"xsample_tau_s": AUTO, "xsample_self_mass": 0.7, "xsample_encoder": None,
                "xsample_embeddings": None, "xsample_cache_size": 100_000, "xsample_check_captions": 10_000}

    def add_to(self, parser):
        d = self.defaults
        group = parser.add_argument_group(self.title)
        group.add_argument(
            "--xsample-tau-s", type=tau_s_value, default=d["xsample_tau_s"], metavar="TAU|auto",
            help="Temperature of the caption-similarity targets; smaller is sharper (tau_s -> 0 with "
                 "distinct captions is CLIP's/SigLIP's own target). 'auto' chooses it before step 0 from "
                 f"{CALIBRATION_CAPTIONS} of the run's captions, sampled uniformly over the whole data set "
                 "(seeded by --seed), at the global batch size, so that each target row puts "
                 "--xsample-self-mass on the sample itself; the chosen value is logged and recorded in "
                 "params.txt. A resumed run keeps it; a resume that changes the self-mass or global batch, "
                 f"or whose params.txt cannot be found, is refused unless {ALLOW_CHANGES_FLAG} asks for "
                 "a recalibration.")
        group.add_argument(
            "--xsample-self-mass", type=float, default=d["xsample_self_mass"],
            help="With --xsample-tau-s auto: the share of each target row's mass on the sample itself, "
                 "in (0, 1) (python -m xsample_openclip.target_stats shows it per tau_s for a data set).")
        group.add_argument(
            "--xsample-encoder", default=d["xsample_encoder"],
            help=f"Frozen caption encoder: '{DEFAULT_ENCODER}' (the packaged all-MiniLM-L6-v2, used when "
                 "the flag is absent) or a local sentence-transformers folder. Never downloaded. With "
                 "--xsample-embeddings the table's encoder is used; if this flag is given too, it must "
                 "be the table's encoder.")
        group.add_argument(
            "--xsample-embeddings", default=d["xsample_embeddings"],
            help="Folder of precomputed caption embeddings (python -m xsample_openclip.precompute); "
                 "replaces the online encoder.")
        group.add_argument(
            "--xsample-cache-size", type=int, default=d["xsample_cache_size"],
            help="Captions whose embeddings the online encoder keeps in memory (LRU); 0 disables.")
        group.add_argument(
            "--xsample-check-captions", type=int, default=d["xsample_check_captions"], metavar="N",
            help="At start-up, look up to N training captions up in --xsample-embeddings (rank 0, "
                 "before the other ranks go on) and refuse to start if any is missing. They are read "
                 "from the local sources of --train-data, spread over them; remote sources are not read. "
                 f"0 skips the check; at most {MAX_CHECK_CAPTIONS:,}. A full pass over the data is the "
                 "separate command `python -m xsample_openclip.precompute --check`.")

    # --- parse time: flags only -----------------------------------------------------------------
    def validate(self, args) -> List[str]:
        problems = []
        tau = args.xsample_tau_s
        if tau != AUTO and not tau > 0:
            problems.append(f"--xsample-tau-s must be > 0 or '{AUTO}', got {tau}")
        if not 0.0 < args.xsample_self_mass < 1.0:
            problems.append(f"--xsample-self-mass must be in (0, 1), got {args.xsample_self_mass}")
        if args.xsample_cache_size < 0:
            problems.append(f"--xsample-cache-size must be >= 0, got {args.xsample_cache_size}")
        if args.xsample_check_captions < 0:
            problems.append(
                f"--xsample-check-captions must be >= 0, got {args.xsample_check_captions}: a check of "
                "every caption reads the whole data set, which rank 0 must not do while the other ranks "
                "wait at start-up; run `python -m xsample_openclip.precompute --model MODEL --train-data "
                "DATA --out TABLE --check` before training instead")
        elif args.xsample_check_captions > MAX_CHECK_CAPTIONS:
            problems.append(
                f"--xsample-check-captions {args.xsample_check_captions} exceeds {MAX_CHECK_CAPTIONS:,}; "
                "for a full check run `python -m xsample_openclip.precompute ... --check` before training")
        if args.dataset_type == "synthetic":
            problems.append("--dataset-type synthetic gives every sample the same caption, so X-Sample "
                            "targets are uniform and nothing is learned; use real captions")
        return problems

    # --- start-up: files, data, calibration (rank 0) -------------------------------------------------
    def startup(self, args, resumed: Optional[Dict[str, str]] = None, views: int = 1) -> StartupResult:
        """``views``: 2 for a loss whose target rows span the other 2N - 1 views of N samples (xclr):
        ``--xsample-tau-s auto`` then calibrates the mass on the other view at 2N - 1 columns."""
        result = StartupResult()
        tokenizer = _tokenizer(args)
        if args.xsample_embeddings is not None:
            result.extend(self._table_startup(args, tokenizer))
        else:
            try:
                resolve_encoder_path(args.xsample_encoder or DEFAULT_ENCODER)
            except FileNotFoundError as err:
                result.problems.append(str(err))
        if result.problems:
            return result
        if args.xsample_tau_s == AUTO:
            result.extend(self._calibrate(args, tokenizer, resumed, views))
        else:
            result.updates[CALIBRATION_RECORD] = GIVEN
        return result

    def _table_startup(self, args, tokenizer) -> StartupResult:
        from .table import EmbeddingTable, fit_problems, missing_captions, rebuild_hint

        path, result = args.xsample_embeddings, StartupResult()
        if not Path(path).is_dir():
            result.problems.append(f"--xsample-embeddings {path!r} does not exist; build it with "
                                   "`python -m xsample_openclip.precompute`")
            return result
        try:
            table = EmbeddingTable(path)
        except (FileNotFoundError, ValueError) as err:
            result.problems.append(str(err))
            return result
        encoder = None
        if args.xsample_encoder is not None:
            try:
                encoder = encoder_identity(args.xsample_encoder)
            except FileNotFoundError as err:
                result.problems.append(str(err))
        result.problems += fit_problems(table, args.model, tokenizer, encoder, args.xsample_encoder)
        limit = args.xsample_check_captions
        if result.problems or limit == 0 or tokenizer is None or not args.train_data:
            return result
        from .sources import sample_captions

        captions, info = sample_captions(args.train_data, limit, args.dataset_type, args.csv_caption_key,
                                         args.csv_separator)
        if not captions:
            result.notes.append(f"--xsample-embeddings {path}: no training caption could be read locally "
                                f"({info['sources']} source(s), {info['remote_or_missing']} remote or "
                                "missing); captions were not checked against the table")
            return result
        found = missing_captions(table, captions, tokenizer)
        read = (f"{found['captions']} training captions checked ({found['distinct']} distinct, from "
                f"{info['sources_read']} of {info['sources']} source(s); {info['report'].summary()}; "
                f"--xsample-check-captions {limit})")
        if found["missing_distinct"]:
            result.problems.append(
                f"--xsample-embeddings {path} is missing {found['missing_distinct']} of the {found['distinct']} "
                f"distinct captions among {read}; it was built from other data ({len(table)} captions, "
                f"{table.meta.get('captions_read')} read, model {table.meta.get('model')!r}): "
                f"{rebuild_hint(args.model)} over this --train-data. (--xsample-check-captions 0 skips this "
                "check; training would then stop at the first batch with a missing caption)")
        else:
            result.notes.append(f"--xsample-embeddings {path} has all {read}")
        return result

    def _calibrate(self, args, tokenizer, resumed, views=1) -> StartupResult:
        result = StartupResult()
        global_batch = args.batch_size * max(1, args.world_size) * max(1, args.accum_freq)
        # two views: a row's other view weighs exp(1/tau_s), every other sample twice -> 2N - 1 columns
        global_batch = views * global_batch - (views - 1)
        decision = resume_decision(args, resumed, global_batch)
        if decision.problem:
            result.problems.append(decision.problem)
            return result
        if decision.keep is not None:
            result.updates.update(xsample_tau_s=decision.keep, **{CALIBRATION_RECORD: decision.record})
            result.notes.append(f"X-Sample tau_s: {decision.keep!r}, kept from the run being resumed "
                                f"({decision.record})")
            return result
        return result.extend(self._calibrate_now(args, tokenizer, global_batch, decision.recalibrating))

    def _calibrate_now(self, args, tokenizer, global_batch, recalibrating=None) -> StartupResult:
        from .calibrate import similarities_of, target_stats, tau_for_self_mass
        from .sampling import sample_uniform

        result = StartupResult()
        try:
            sample = sample_uniform(args.train_data, CALIBRATION_CAPTIONS, args.seed, args.dataset_type,
                                    args.csv_caption_key, args.csv_separator)
        except ValueError as err:
            result.problems.append(f"--xsample-tau-s auto could not read the training captions of "
                                   f"--train-data {args.train_data}: {err}")
            return result
        captions = sample.captions
        if len(captions) < 2:
            result.problems.append(
                "--xsample-tau-s auto needs training captions to calibrate on, but fewer than 2 could be read "
                f"locally from --train-data {args.train_data}; pass a number, e.g. --xsample-tau-s 0.1")
            return result
        if tokenizer is None:
            result.problems.append(f"--xsample-tau-s auto: no tokenizer for --model {args.model}")
            return result
        from .table import MissingCaptionsError

        embedder, _ = self.build_embedder(args, tokenizer=tokenizer)
        try:
            embeddings = embedder(tokenizer(captions))
        except MissingCaptionsError as err:
            result.problems.append(f"--xsample-tau-s auto could not embed the sampled training captions: {err}")
            return result
        similarities = similarities_of(embeddings.cpu())
        tau = tau_for_self_mass(similarities, args.xsample_self_mass, global_batch)
        stats = target_stats(similarities, tau, global_batch)
        record = calibration_record(args.xsample_self_mass, global_batch, sample.describe())
        result.updates.update(xsample_tau_s=tau, **{CALIBRATION_RECORD: record})
        if recalibrating:
            result.notes.append(f"X-Sample tau_s RECALIBRATED on resume ({ALLOW_CHANGES_FLAG}): {recalibrating}; "
                                f"from here on the targets use tau_s {tau!r}")
        result.notes.append(
            f"X-Sample tau_s calibrated: {tau:.6g} (--xsample-tau-s auto: self-mass {stats['self_mass']:.3f}, "
            f"target {args.xsample_self_mass}; row entropy {stats['entropy']:.2f} nats of at most "
            f"{stats['uniform_entropy']:.2f}; global batch {global_batch}; {sample.describe()}; "
            f"{sample.report.summary()})")
        return result

    # --- build ---------------------------------------------------------------------------------------
    def build_embedder(self, args, tokenizer=None, device=None):
        """``(embedder, description)``: the table lookup with ``--xsample-embeddings``, else the encoder."""
        from .decode import TokenDecoder, decoder_or_none
        from .embedders import OnlineCaptionEmbeddings, TableCaptionEmbeddings

        tokenizer = tokenizer or _tokenizer(args)
        if args.xsample_embeddings is not None:
            from .table import EmbeddingTable

            table = EmbeddingTable(args.xsample_embeddings)
            embedder = TableCaptionEmbeddings(table, decoder_or_none(tokenizer))
            source = f"table {args.xsample_embeddings} ({len(table)} captions, {table.meta.get('encoder')})"
        else:
            from .encoders import SentenceEncoder

            device = device or args.device
            encoder = SentenceEncoder(args.xsample_encoder or DEFAULT_ENCODER, device=device)
            embedder = OnlineCaptionEmbeddings(TokenDecoder(tokenizer), encoder, args.xsample_cache_size)
            source = f"online encoder {encoder.name} on {device}"
        # --accum-freq k: OpenCLIP calls the loss k times per batch, on the same concatenated tokens
        embedder.stats.calls_per_batch = max(1, getattr(args, "accum_freq", 1))
        return embedder, source


def _tokenizer(args):
    try:
        from open_clip import get_tokenizer

        return get_tokenizer(args.model, cache_dir=args.cache_dir, context_length=args.force_context_length)
    except Exception:  # noqa: BLE001 - an unknown model is OpenCLIP's own error, reported by main
        return None


def encoder_identity(spec):
    """(name as precompute records it, width) of an --xsample-encoder value; raises if not local."""
    path = resolve_encoder_path(spec)
    name = "all-MiniLM-L6-v2" if spec == DEFAULT_ENCODER else str(path)
    width = json.loads((path / "config.json").read_text()).get("hidden_size")
    return name, width


CAPTION_TARGETS = CaptionTargetFlags()

__all__ = ["AUTO", "CAPTION_TARGETS", "CaptionTargetFlags", "encoder_identity"]
