"""After ``init_distributed_device``: multi-process CPU training, and the loss plugin's start-up checks.

OpenCLIP 3.3.0 calls ``init_distributed_device`` (main.py L83) right after parsing and before it makes
the log folder. Wrapping it gives one place where the process group exists but nothing is written yet:

- CPU processes under torchrun/SLURM: main.py L302 wraps the model in
  ``DistributedDataParallel(model, device_ids=[device])``, which DDP refuses for CPU modules. For a
  distributed run on CPU (and only then: a CUDA run is untouched), ``torch.nn.parallel.
  DistributedDataParallel`` is replaced, in this process, by a subclass that drops ``device_ids`` when
  they name CPU devices; it is logged once. With the gloo backend (OpenCLIP's default for CPU) that
  makes ``torchrun --nproc_per_node N -m open_clip_train.main --device cpu`` train.
- Start-up checks that read files or data (the resume check against the run's params.txt, the
  plugin's ``startup``: encoder, table, a sample of captions, tau_s calibration) run on rank 0 only;
  rank 0 broadcasts the result and every rank acts on it: all stop with the same message (exit code 2)
  or all go on with the same settings. No rank waits alone in a collective while another reads data
  or exits.
"""
import functools
import sys

import torch

from xsample_openclip import registry

from .resume import resume_check


class _CpuDistributedDataParallel(torch.nn.parallel.DistributedDataParallel):
    """DDP that ignores ``device_ids`` naming CPU devices (OpenCLIP passes ``[device]`` even on CPU)."""

    def __init__(self, module, device_ids=None, *args, **kwargs):
        if device_ids is not None and all(torch.device(d).type == "cpu" for d in device_ids):
            device_ids = None
        super().__init__(module, device_ids, *args, **kwargs)


def allow_cpu_ddp() -> bool:
    """Install the CPU DDP shim (idempotent); True if it was installed by this call."""
    if torch.nn.parallel.DistributedDataParallel is _CpuDistributedDataParallel:
        return False
    torch.nn.parallel.DistributedDataParallel = _CpuDistributedDataParallel
    return True


def _startup_result(args, run: registry.LossRun) -> registry.StartupResult:
    plugin = run.plugin
    result, previous = resume_check(args, plugin.kept_on_resume(args))
    if not result.problems:
        result.extend(plugin.startup(args, previous))
    return result


def _share(args, result):
    """Rank 0's result on every rank (a no-op without a process group)."""
    if not getattr(args, "distributed", False):
        return result
    from open_clip_train.distributed import broadcast_object

    payload = broadcast_object(args, (result.problems, result.updates, result.notes) if args.rank == 0 else None)
    return registry.StartupResult(*payload)


def run_startup(args) -> None:
    """The plugin's start-up checks on rank 0, acted on by every rank; exits (code 2) on a refusal."""
    run = registry.loss_run(args)
    if run is None:
        return
    result = _startup_result(args, run) if args.rank == 0 else None
    result = _share(args, result)
    if result.problems:
        prefix = "" if args.rank == 0 else f"rank {args.rank}: stopping with rank 0, which found: "
        sys.stderr.write(f"error: {prefix}" + "\n  ".join(result.problems) + "\n")
        sys.stderr.flush()
        if getattr(args, "distributed", False) and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        sys.exit(2)
    for name, value in result.updates.items():
        setattr(args, name, value)
    run.notes += result.notes


def wrap_init_distributed_device(stock):
    @functools.wraps(stock)
    def init_distributed_device(args):
        device = stock(args)
        run = registry.loss_run(args)
        if run is not None:
            if getattr(args, "distributed", False) and torch.device(args.device).type == "cpu" and allow_cpu_ddp():
                run.notes.append(
                    f"CPU distributed training ({args.world_size} processes, backend "
                    f"{torch.distributed.get_backend()}): the model is wrapped in DistributedDataParallel "
                    "without device_ids (OpenCLIP passes [device], which DDP refuses for CPU modules)")
            run_startup(args)
        return device

    return init_distributed_device
