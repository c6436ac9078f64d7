"""The centred caption graph's statistics (``--xsample-graph-centre``): chosen once, recorded, kept on resume.

Why: centring subtracts the run's mean caption embedding (and with ``--xsample-graph-whiten`` applies a
ZCA whitening) before the cosine (``losses/graph.py``). The statistics come from the run's own
calibration sample (``sampling.py``), so a resumed run that computed them anew could get other ones
(other data, another encoder device) and change its targets mid-run without a word. So:

- a new run computes them at start-up (rank 0, from the calibration sample; every rank receives them
  with the start-up result) and records their digest in params.txt (``xsample_graph_statistics``); at
  ``build`` rank 0 writes them to ``<logs>/<name>/xsample_graph_statistics.pt``;
- a resume reads that file from the run it continues and uses it when its digest is the one recorded in
  that run's params.txt; a missing or different file, or a run whose params.txt cannot be found, is
  refused, unless ``--resume-allow-loss-changes`` asks for new statistics (logged).

``CentredEmbedder`` applies them: it wraps the caption embedder, so every loss that builds its graph from
caption embeddings (xsample, xsample-siglip, xclr) sees the centred graph.
"""
import copy
import logging
import re
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from ..losses.graph import centre_captions, centring_statistics, statistics_digest
from ..registry import ALLOW_CHANGES_FLAG, PREVIOUS_RUN_UNKNOWN

#: The argument (and params.txt line) that records the statistics' digest.
RECORD = "xsample_graph_statistics"
#: The file, in the run's log folder, that holds them.
STATS_FILE = "xsample_graph_statistics.pt"
_DIGEST = re.compile(r"^sha256:([0-9a-f]{16})")


class GraphStatistics(str):
    """Mean caption (and whitening), float64 on the host. A ``str`` (the digest and where the statistics
    came from), so the argument it is stored in reads as text wherever the arguments go (params.txt, a
    logger's config); the tensors travel with it to every rank (pickled with the start-up result)."""

    def __new__(cls, mean: torch.Tensor, whitening: Optional[torch.Tensor], source: str):
        mean = mean.double().cpu()
        whitening = None if whitening is None else whitening.double().cpu()
        digest = statistics_digest(mean, whitening)
        kind = "centre+whiten" if whitening is not None else "centre"
        self = super().__new__(cls, f"sha256:{digest} ({kind}; {source}; {STATS_FILE} in the run's log folder)")
        self.mean, self.whitening, self.source, self.digest = mean, whitening, source, digest
        return self

    def __getnewargs__(self):
        return self.mean, self.whitening, self.source

    @classmethod
    def from_sample(cls, embeddings: torch.Tensor, whiten: bool, source: str) -> "GraphStatistics":
        mean, whitening = centring_statistics(embeddings, whiten)
        return cls(mean, whitening, source)

    def save(self, folder) -> Path:
        path = Path(folder) / STATS_FILE
        torch.save({"mean": self.mean, "whitening": self.whitening, "source": self.source,
                    "digest": self.digest}, path)
        return path

    @classmethod
    def load(cls, path) -> "GraphStatistics":
        """The statistics in ``path``; a ValueError if the file's tensors do not give its digest."""
        data = torch.load(path, map_location="cpu", weights_only=True)
        stats = cls(data["mean"], data["whitening"], data["source"])
        if stats.digest != data["digest"]:
            raise ValueError(f"{path}: its statistics hash to {stats.digest}, not the {data['digest']} it records")
        return stats


def recorded_digest(record) -> Optional[str]:
    match = _DIGEST.match(str(record or ""))
    return match.group(1) if match else None


def resumed_statistics(args, resumed: Optional[Dict[str, str]]) -> Tuple[Optional[GraphStatistics], str]:
    """(the resumed run's statistics, "") when they can be reused; (None, why not) when a resume cannot
    reuse them; (None, "") when there is nothing to reuse (not resuming, or that run did not centre:
    a change of --xsample-graph-centre is the resume check's refusal, ``patches/resume.py``)."""
    if resumed is None:
        return None, ""
    unknown = resumed.get(PREVIOUS_RUN_UNKNOWN)
    if unknown is not None:
        return None, f"the run it continues cannot be read ({unknown}), nor its {STATS_FILE}"
    if RECORD not in resumed:
        return None, ""
    digest = recorded_digest(resumed[RECORD])
    from ..patches.resume import previous_run

    params, _ = previous_run(args)
    path = Path(params).parent / STATS_FILE if params is not None else None
    if digest is None or path is None or not path.is_file():
        return None, (f"that run's params.txt records {RECORD}: {resumed[RECORD]!r}, but "
                      f"{path or STATS_FILE} {'is missing' if digest else 'cannot be matched to it'}")
    try:
        stats = GraphStatistics.load(path)
    except (ValueError, KeyError, RuntimeError, OSError) as err:
        return None, f"{path} cannot be read: {err}"
    if stats.digest != digest:
        return None, f"{path} holds statistics {stats.digest}, that run's params.txt records {digest}"
    return stats, ""


def refusal(args, why: str) -> str:
    return (f"--xsample-graph-centre with --resume {args.resume}: {why}. Computing the statistics anew could "
            "change the caption graph mid-run without a word. Restore that file into the run's log folder, "
            f"or compute new statistics on purpose with {ALLOW_CHANGES_FLAG} (logged and recorded).")


def write_statistics(args, stats: GraphStatistics) -> Optional[Path]:
    """Rank 0: the statistics into the run's log folder (once it exists); None (logged) without one."""
    if getattr(args, "rank", 0) != 0:
        return None
    logs, name = getattr(args, "logs", None), getattr(args, "name", None)
    if not logs or not name or not Path(logs, name).is_dir():
        logging.warning(f"X-Sample graph statistics {stats.digest} not written: no run log folder "
                        f"(--logs {logs}, --name {name}); a resume of this run cannot reuse them")
        return None
    path = Path(logs, name) / STATS_FILE
    if path.is_file():
        try:
            if GraphStatistics.load(path).digest == stats.digest:
                return path
        except (ValueError, KeyError, RuntimeError, OSError) as err:
            logging.warning(f"{path} could not be read ({err}); writing it anew")
        logging.info(f"{path} held other statistics; replaced by {stats.digest} (recalibrated on resume)")
    return stats.save(path.parent)


class CentredEmbedder:
    """A caption embedder whose embeddings are centred (and whitened) unit rows (``centre_captions``).

    Everything else (``stats``, ``decoder``, ...) is the wrapped embedder's; a copy copies it too, so a
    ``single_process`` twin counts its captions apart."""

    def __init__(self, embedder, statistics: GraphStatistics):
        self.__dict__["inner"] = embedder
        self.__dict__["statistics"] = statistics

    def __call__(self, tokens):
        embeddings = self.inner(tokens)
        mean, whitening = self._on(embeddings.device)
        return centre_captions(embeddings, mean, whitening)

    def _on(self, device):
        """The statistics on ``device`` in float32, copied there once (not at every batch)."""
        cache = self.__dict__.setdefault("_cache", {})
        if device not in cache:
            w = self.statistics.whitening
            cache[device] = (self.statistics.mean.float().to(device),
                             None if w is None else w.float().to(device))
        return cache[device]

    def __getattr__(self, name):
        return getattr(self.__dict__["inner"], name)

    def __setattr__(self, name, value):
        setattr(self.inner, name, value)

    def __copy__(self):
        return CentredEmbedder(copy.copy(self.inner), self.statistics)
