"""The benchmark of xsample_openclip: X-Sample against stock OpenCLIP, measured side by side in one run.

    python -m xsample_openclip.bench                   # CPU defaults, every section
    python -m xsample_openclip.bench --quick           # smoke run with tiny sizes
    python -m xsample_openclip.bench --device cuda     # GPU sizes (local batch up to 16384), ViT-B-32
    python -m xsample_openclip.bench.gpu_check         # the one-command GPU check (docs/benchmark.md)

One module per job: ``cli`` (flags, defaults, the run), ``common`` (printing, inputs, verdicts),
``measure`` (timing and peak memory), ``ranks`` (a rank of a large world, simulated in one process),
``data`` (generated captions and image-caption sets), one module per section (``loss``, ``sigmoid``,
``scale``, ``host``, ``targets``, ``startup``, ``guard``, ``e2e``, ``precompute``) and ``gpu_check``.
Nothing on the training path imports this package.
"""
