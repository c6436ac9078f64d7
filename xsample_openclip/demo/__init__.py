"""The main job: X-Sample against stock OpenCLIP losses on embedded data, end to end, on a CPU.

    python -m xsample_openclip.demo --out runs/demo              # the default: emoji data, 1 seed, ~10 min

``cli`` parses the options and runs a comparison; ``datasets`` says per data set what is built, which
held-out sets each split evaluates and which numbers are the headline; ``runs`` trains through
``python -m open_clip_train.main`` exactly as a user would; ``summary`` aggregates seeds (mean, std,
paired differences); ``plots`` draws the comparison and the training-loss curves.
"""
