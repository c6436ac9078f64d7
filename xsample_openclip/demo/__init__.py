"""The main job: X-Sample against stock OpenCLIP losses on embedded data, end to end, on a CPU.

    python -m xsample_openclip.demo --out runs/demo              # the default: emoji data, 1 seed, ~10 min

``cli`` parses the options and runs a comparison; ``datasets`` says per data set what is built, which
held-out sets each split evaluates and which numbers are the headline; ``runs`` trains through
OpenCLIP's own trainer with OpenCLIP's flags (``python -m xsample_openclip.launch``, the hook-free
launcher), checks each run's params.txt for the asked loss (``trained_loss``) and reuses a run only if
nothing that determines its result changed (``fingerprint``); ``summary`` aggregates seeds (mean, std,
paired differences with 95 % CIs from ``stats``); ``tables`` writes the per-seed file and rebuilds a
table from it alone; ``plots`` draws the comparison and the training-loss curves; ``paper`` is the
``--family paper`` comparison (CLIP, SimCLR, X-CLR, SupCon, X-Sample by linear probe) and ``datasize``
plots its probe accuracy against the training-data fraction.
"""
from xsample_openclip.extras import require

require("eval", "demo", what="the demo (python -m xsample_openclip.demo)")
