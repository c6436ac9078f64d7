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
from .sampling import CALIBRATION_CAPTIONS, READ_SECONDS

AUTO = "auto"
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
    kept = ("xsample_tau_s", "xsample_self_mass", "xsample_encoder", "xsample_embeddings",
            "xsample_graph_centre", "xsample_graph_whiten", "xsample_graph_topk", "xsample_clip_weight_schedule")
    #: tau_s auto at self-mass 0.7: chosen on the validation splits of both demo data sets (docs/studies/validation.md)
    defaults = {"xsample_tau_s": AUTO, "xsample_self_mass": 0.7, "xsample_encoder": None,
                "xsample_embeddings": None, "xsample_cache_size": 100_000, "xsample_check_captions": 10_000,
                "xsample_calibration_data": None,
                "xsample_graph_centre": False, "xsample_graph_whiten": False, "xsample_graph_topk": None,
                "xsample_clip_weight_schedule": "constant"}

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
                 "a recalibration. Streamed --train-data (pipe:, http(s)://, gs://) is read through "
                 f"webdataset's gopen, at most {READ_SECONDS} s (docs/tau-s.md).")
        group.add_argument(
            "--xsample-calibration-data", default=d["xsample_calibration_data"], metavar="PATH",
            help="With --xsample-tau-s auto (or --xsample-graph-centre): sample the calibration captions "
                 "from this data instead of --train-data (--train-data syntax: a CSV, or webdataset shards; "
                 "--csv-caption-key and --csv-separator apply), e.g. a local copy of some training shards "
                 "where the training data cannot be read at start-up. Recorded in params.txt.")
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
        self._add_graph_flags(group)

    def _add_graph_flags(self, group):
        from ..losses.graph import CLIP_WEIGHT_SCHEDULES, WHITEN_RIDGE

        d = self.defaults
        group.add_argument(
            "--xsample-graph-centre", action="store_true", default=d["xsample_graph_centre"],
            help="Centre the caption graph: subtract the mean caption embedding of the calibration sample "
                 f"({CALIBRATION_CAPTIONS} of the run's captions, seeded by --seed) before the cosine, so what "
                 "all captions share (a template) stops counting as similarity. The statistics are recorded "
                 "(params.txt: a digest; the run's log folder: xsample_graph_statistics.pt) and a resume "
                 "reuses them (docs/targets.md).")
        group.add_argument(
            "--xsample-graph-whiten", action="store_true", default=d["xsample_graph_whiten"],
            help="With --xsample-graph-centre: also whiten (ZCA, from the same sample, ridge "
                 f"{WHITEN_RIDGE} x the mean eigenvalue).")
        group.add_argument(
            "--xsample-graph-topk", type=int, default=d["xsample_graph_topk"], metavar="K",
            help="Keep each target row's K nearest captions of the global batch (its own included, ties with "
                 "the K-th kept); the others get target 0, so a template's long tail cannot take the row. "
                 "--loss xsample and xsample-siglip. Absent: every caption.")
        group.add_argument(
            "--xsample-clip-weight-schedule", choices=CLIP_WEIGHT_SCHEDULES, default=d["xsample_clip_weight_schedule"],
            help="--loss xsample: how --xsample-clip-weight w moves over the epochs: 'constant' w; "
                 "'linear-down' from w at the first epoch to 0 at the last (hard early, soft late); "
                 "'linear-up' from 0 to w. Needs --epochs >= 2 and w > 0.")

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
        problems += self._graph_problems(args)
        if args.xsample_calibration_data and tau != AUTO and not args.xsample_graph_centre:
            problems.append(f"--xsample-calibration-data is read by --xsample-tau-s auto and --xsample-graph-centre; "
                            f"with --xsample-tau-s {tau} it is unused: drop it")
        if args.dataset_type == "synthetic":
            problems.append("--dataset-type synthetic gives every sample the same caption, so X-Sample "
                            "targets are uniform and nothing is learned; use real captions")
        return problems

    @staticmethod
    def _graph_problems(args) -> List[str]:
        from ..losses.graph import MIN_TOPK

        problems = []
        loss = getattr(args, "loss", None)
        if args.xsample_graph_whiten and not args.xsample_graph_centre:
            problems.append("--xsample-graph-whiten whitens the centred graph: add --xsample-graph-centre")
        k = args.xsample_graph_topk
        if k is not None:
            if k < MIN_TOPK:
                problems.append(f"--xsample-graph-topk must be >= {MIN_TOPK}, got {k} (K = 1 keeps only the "
                                "sample itself: that is --xsample-clip-weight 1)")
            if loss == "xclr":
                problems.append("--xsample-graph-topk is not applied by --loss xclr (its targets span two views "
                                "per caption); drop it, or use --loss xsample")
            elif loss == "xsample" and getattr(args, "xsample_image_weight", 0.0) and \
                    getattr(args, "xsample_views", 1) == 2:
                problems.append("--xsample-graph-topk with --xsample-views 2 --xsample-image-weight: the "
                                "two-view image-image term is X-CLR's, which does not apply top-k; drop one")
        schedule = args.xsample_clip_weight_schedule
        if schedule != "constant":
            weight = getattr(args, "xsample_clip_weight", None)
            if loss != "xsample":
                problems.append(f"--xsample-clip-weight-schedule {schedule} schedules --xsample-clip-weight, "
                                f"which only --loss xsample has (not --loss {loss}); drop it")
            elif not weight:
                problems.append(f"--xsample-clip-weight-schedule {schedule} moves --xsample-clip-weight, which "
                                "is 0: give the weight it starts or ends at, e.g. --xsample-clip-weight 0.4")
            if getattr(args, "epochs", 2) < 2:
                problems.append(f"--xsample-clip-weight-schedule {schedule} changes the weight once per epoch "
                                f"and needs --epochs >= 2, got {args.epochs}")
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
        sample = _SampleCache()
        if args.xsample_graph_centre:
            result.extend(self._graph_statistics(args, tokenizer, resumed, sample))
            if result.problems:
                return result
        if args.xsample_tau_s == AUTO:
            result.extend(self._calibrate(args, tokenizer, resumed, views, sample, result.updates.get(GRAPH_RECORD)))
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

    def _graph_statistics(self, args, tokenizer, resumed, sample) -> StartupResult:
        """--xsample-graph-centre: the resumed run's statistics, or new ones from the calibration sample."""
        from .graph_options import GraphStatistics, refusal, resumed_statistics

        result = StartupResult()
        kept, why = resumed_statistics(args, resumed)
        if kept is not None:
            result.updates[GRAPH_RECORD] = kept
            result.notes.append(f"X-Sample graph statistics kept from the run being resumed: {kept}")
            return result
        if why and not getattr(args, "resume_allow_loss_changes", False):
            result.problems.append(refusal(args, why))
            return result
        drawn = sample.get(self, args, tokenizer)
        if drawn.problem:
            result.problems.append(drawn.problem.replace("--xsample-tau-s auto", "--xsample-graph-centre"))
            return result
        try:
            stats = GraphStatistics.from_sample(drawn.embeddings, args.xsample_graph_whiten, drawn.sample.describe())
        except ValueError as err:  # one distinct caption: each would equal the mean caption at the first step
            result.problems.append(
                f"--xsample-graph-centre cannot centre on the calibration sample ({drawn.sample.describe()}): {err}. "
                "Centring subtracts the mean caption, which here is every caption. Fix: drop --xsample-graph-centre"
                + (" and --xsample-graph-whiten" if args.xsample_graph_whiten else "")
                + "; or, if the training captions do differ, draw the sample from data that shows it "
                "(--xsample-calibration-data)")
            return result
        result.updates[GRAPH_RECORD] = stats
        result.notes.append(("X-Sample graph statistics COMPUTED ANEW on resume (" + ALLOW_CHANGES_FLAG + f"): {why}; "
                             if why else "X-Sample graph statistics: ") + str(stats))
        return result

    def _calibrate(self, args, tokenizer, resumed, views=1, sample=None, statistics=None) -> StartupResult:
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
            unused = (f"; --xsample-calibration-data {args.xsample_calibration_data} unused"
                      if args.xsample_calibration_data else "")
            result.notes.append(f"X-Sample tau_s: {decision.keep!r}, kept from the run being resumed "
                                f"({decision.record}){unused}")
            return result
        return result.extend(self._calibrate_now(args, tokenizer, global_batch, decision.recalibrating, sample,
                                                 statistics))

    def _calibrate_now(self, args, tokenizer, global_batch, recalibrating=None, sample_cache=None,
                       statistics=None) -> StartupResult:
        """tau_s for the asked self-mass on the graph the run uses: centred with ``statistics``, cut to
        --xsample-graph-topk."""
        from .calibrate import UnreachableSelfMass, target_stats, tau_for_self_mass

        result = StartupResult()
        drawn = (sample_cache or _SampleCache()).get(self, args, tokenizer)
        if drawn.problem:
            result.problems.append(drawn.problem)
            return result
        sample = drawn.sample
        similarities = calibration_similarities(drawn.embeddings, statistics, args.xsample_graph_topk, global_batch)
        try:
            tau = tau_for_self_mass(similarities, args.xsample_self_mass, global_batch)
        except UnreachableSelfMass as err:
            result.problems.append(_unreachable(args, err, global_batch))
            return result
        stats = target_stats(similarities, tau, global_batch)
        record = calibration_record(args.xsample_self_mass, global_batch, sample.describe())
        result.updates.update(xsample_tau_s=tau, **{CALIBRATION_RECORD: record})
        if recalibrating:
            result.notes.append(f"X-Sample tau_s RECALIBRATED on resume ({ALLOW_CHANGES_FLAG}): {recalibrating}; "
                                f"from here on the targets use tau_s {tau!r}")
        result.notes.append(
            f"X-Sample tau_s calibrated: {tau:.6g} (--xsample-tau-s auto: self-mass {stats['self_mass']:.3f}, "
            f"target {args.xsample_self_mass}; row entropy {stats['entropy']:.2f} nats of at most "
            f"{stats['uniform_entropy']:.2f}; global batch {global_batch}; graph {_graph_name(args)}; {sample.describe()}; "
            f"{sample.report.summary()})")
        return result

    # --- build ---------------------------------------------------------------------------------------
    def build_embedder(self, args, tokenizer=None, device=None, raw=False):
        """``(embedder, description)``: the table lookup with ``--xsample-embeddings``, else the encoder;
        unless ``raw``, centred with the run's graph statistics (``--xsample-graph-centre``, written to the
        run's log folder). The losses get ``--xsample-graph-topk`` from their plugin (``plugins.py``)."""
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
        if raw:
            return embedder, source
        return self._graph_embedder(args, embedder, source)

    @staticmethod
    def _graph_embedder(args, embedder, source):
        statistics = getattr(args, GRAPH_RECORD, None)
        if getattr(args, "xsample_graph_centre", False):
            from .graph_options import CentredEmbedder, GraphStatistics, write_statistics

            if not isinstance(statistics, GraphStatistics):
                raise RuntimeError("--xsample-graph-centre: the graph statistics were not computed at start-up "
                                   f"({GRAPH_RECORD}: {statistics!r}); launch through the xsample_openclip hook")
            write_statistics(args, statistics)
            embedder = CentredEmbedder(embedder, statistics)
            source += f", centred graph {statistics}"
        topk = getattr(args, "xsample_graph_topk", None)  # absent for target_stats' raw embedder
        if topk is not None:
            source += f", top-{topk} graph"
        return embedder, source


GRAPH_RECORD = "xsample_graph_statistics"


def _graph_name(args) -> str:
    parts = (["centred" + (", whitened" if args.xsample_graph_whiten else "")] if args.xsample_graph_centre else [])
    parts += [f"top-{args.xsample_graph_topk}"] if args.xsample_graph_topk is not None else []
    return " ".join(parts) or "full"


def _unreachable(args, err, global_batch) -> str:
    """The refusal for a self-mass no tau_s reaches (``calibrate.UnreachableSelfMass``): what was asked,
    what is reachable, and the flags that help on that side."""
    import math

    from .calibrate import TAU_RANGE

    above = err.side == "above"
    step = 10.0 ** (math.floor(math.log10(err.reachable)) - 1)  # the bound to 2 digits, rounded inwards
    inside = (math.floor if above else math.ceil)(err.reachable / step) * step
    topk = args.xsample_graph_topk
    asked = f"self-mass {err.asked}" + (f" with --xsample-graph-topk {topk}" if topk is not None else "")
    if above:
        why = ("identical or near-identical captions (class captions, a template) share each row's mass at any "
               "tau_s")
        fixes = (f"ask for --xsample-self-mass {inside:g} or less; or give tau_s as a number (--xsample-tau-s 1e-4: "
                 "identical captions then share their row equally, SupCon's targets); or a smaller global batch "
                 "(--batch-size, --accum-freq, fewer processes), which holds fewer copies of a caption")
    else:
        why = ("the batch has too few other captions" if topk is None else
               f"a row keeps only its {topk} nearest captions") + " to take more mass even at the flattest tau_s"
        fixes = (f"ask for --xsample-self-mass {inside:g} or more; or give tau_s as a number (--xsample-tau-s); or "
                 + ("raise K" if topk is not None else "a larger global batch (--batch-size, --accum-freq, more "
                                                       "processes)"))
    return (f"--xsample-tau-s auto cannot reach {asked} at global batch {global_batch} (graph {_graph_name(args)}): "
            f"every tau_s in [{TAU_RANGE[0]:g}, {TAU_RANGE[1]:g}] puts {'at most' if above else 'at least'} "
            f"{err.reachable:.3g} of a target row on the sample itself, as {why}. Fix: {fixes}.")


def calibration_similarities(embeddings, statistics=None, topk=None, global_batch=None):
    """The calibration sample's similarities on the graph the run uses (float64, host): centred with
    ``statistics`` (``graph_options.GraphStatistics``), pairs cut by top-k at ``global_batch`` at -inf."""
    from ..losses.graph import centre_captions, unit_captions
    from .calibrate import similarities_of, topk_similarities

    e = unit_captions(embeddings.cpu()).double()
    if statistics is not None:
        e = centre_captions(e, statistics.mean, statistics.whitening)
    similarities = similarities_of(e)
    return similarities if topk is None else topk_similarities(similarities, topk, global_batch)


class _Drawn:
    def __init__(self, sample=None, embeddings=None, problem=None):
        self.sample, self.embeddings, self.problem = sample, embeddings, problem


class _SampleCache:
    """The calibration sample and its embeddings, drawn and embedded once per start-up."""

    def __init__(self):
        self.drawn = None

    def get(self, flags, args, tokenizer) -> _Drawn:
        if self.drawn is None:
            self.drawn = _draw_sample(flags, args, tokenizer)
        return self.drawn


def _draw_sample(flags, args, tokenizer) -> _Drawn:
    from .sampling import CalibrationDataError, calibration_sample
    from .table import MissingCaptionsError

    try:
        sample = calibration_sample(args)
    except CalibrationDataError as err:
        return _Drawn(problem=str(err))
    if tokenizer is None:
        return _Drawn(problem=f"--xsample-tau-s auto: no tokenizer for --model {args.model}")
    embedder, _ = flags.build_embedder(args, tokenizer=tokenizer, raw=True)
    try:
        embeddings = embedder(tokenizer(sample.captions))
    except MissingCaptionsError as err:
        return _Drawn(problem=f"--xsample-tau-s auto could not embed the sampled training captions: {err}")
    return _Drawn(sample, embeddings.cpu())


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
