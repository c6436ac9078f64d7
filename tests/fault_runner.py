"""OpenCLIP's real ``main`` (with this package's patches) and an injected fault, for the reliability tests.

In a subprocess: ``XSAMPLE_TEST_FAULT='{...}' python fault_runner.py <open_clip_train args>``; in the test
process: ``run_main(argv, fault)``. The fault is a dict, all keys optional:
    kill_at: [epoch, batch]     SIGKILL the process when the model is called for that batch (0-based)
    nan_at: [epoch, batch]      make that batch's image features NaN (a numerics fault inside the step)
    reseed_from_epoch: k        from epoch k on, reseed torch/numpy/random with seed + epoch before the
                                epoch, so its data order and augmentation depend only on the epoch
    record_order: PATH          append a JSON line per trained batch: epoch, batch, its token keys
Nothing else differs from ``python -m open_clip_train.main``.
"""
import json
import logging
import os
import random
import signal
import sys


class FaultyModel:
    def __init__(self, model, epoch, fault):
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_epoch", epoch)
        object.__setattr__(self, "_fault", fault)
        object.__setattr__(self, "_batch", 0)

    def __call__(self, image=None, text=None, *args, **kwargs):
        import torch

        from xsample_openclip.targets.keys import token_keys

        batch, fault = self._batch, self._fault
        if torch.is_grad_enabled():  # accum_freq > 1 also calls the model without grad first
            object.__setattr__(self, "_batch", batch + 1)
        if fault.get("kill_at") == [self._epoch, batch]:
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)
        if fault.get("record_order") and text is not None and torch.is_grad_enabled():
            with open(fault["record_order"], "a") as f:
                f.write(json.dumps({"epoch": self._epoch, "batch": batch,
                                    "keys": [int(k) for k in token_keys(text)]}) + "\n")
        out = self._model(image, text, *args, **kwargs)
        if fault.get("nan_at") == [self._epoch, batch]:
            out["image_features"] = out["image_features"] * float("nan")
        return out

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __setattr__(self, name, value):
        setattr(self._model, name, value)


MODEL = "xs-tiny-vit-32"


def train_argv(logs, name, data_args, *extra, epochs=4, batch_size=16):
    """The tiny CPU training command the reliability tests share (X-Sample loss, fp32, no workers)."""
    return [*data_args, "--model", MODEL, "--batch-size", str(batch_size), "--epochs", str(epochs),
            "--workers", "0", "--device", "cpu", "--precision", "fp32", "--lr", "2e-3", "--warmup", "2",
            "--wd", "0.1", "--log-every-n-steps", "1", "--seed", "0", f"--logs={logs}", "--name", name,
            "--loss", "xsample", "--xsample-tau-s", "0.2", *extra]


def csv_args(path):
    return ["--train-data", str(path), "--dataset-type", "csv"]


def run_main(argv, fault=None):
    """Run ``open_clip_train.main.main(argv)`` with the fault; restores logging and the patched loop after."""
    import numpy as np
    import torch

    from xsample_openclip import patches

    fault = dict(fault or {})
    patches.install()
    from open_clip_train import main as openclip_main

    patches.patch_main(openclip_main)
    patched = openclip_main.train_one_epoch

    def train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, tb_writer=None):
        if "reseed_from_epoch" in fault and epoch >= fault["reseed_from_epoch"]:
            torch.manual_seed(args.seed + epoch)
            np.random.seed(args.seed + epoch)
            random.seed(args.seed + epoch)
        return patched(FaultyModel(model, epoch, fault), data, loss, epoch, optimizer, scaler, scheduler,
                       dist_model, args, tb_writer=tb_writer)

    handlers, level = list(logging.root.handlers), logging.root.level
    levels = {name: lg.level for name, lg in logging.root.manager.loggerDict.items()
              if isinstance(lg, logging.Logger)}
    openclip_main.train_one_epoch = train_one_epoch
    try:
        return openclip_main.main(list(argv))
    finally:
        openclip_main.train_one_epoch = patched
        for handler in logging.root.handlers[:]:
            if handler not in handlers:
                logging.root.removeHandler(handler)
                handler.close()
        logging.root.setLevel(level)
        for name, lg in logging.root.manager.loggerDict.items():  # setup_logging sets every logger
            if isinstance(lg, logging.Logger):
                lg.setLevel(levels.get(name, logging.NOTSET))


if __name__ == "__main__":
    sys.exit(run_main(sys.argv[1:], json.loads(os.environ.get("XSAMPLE_TEST_FAULT", "{}"))))
