"""Whether the installed OpenCLIP is the one these patches were written for.

Two checks, both cheap and both run only once OpenCLIP itself is being imported or used:
- the release (``open_clip.__version__``; the package metadata only if OpenCLIP is not imported);
- the source of every OpenCLIP function (or class) whose code the patches rely on, not only the ones
  they re-implement: the functions they wrap (how ``train_one_epoch`` calls the model and the loss,
  that ``evaluate`` calls ``get_clip_metrics``, ...), the ones whose call order they rely on (``main``)
  and the helpers the losses call. ``GATED`` lists them, each with what relies on it; a sha256 of
  ``inspect.getsource`` (of the stock function under a patch's wrapper) must be the 3.3.0 one, so a
  3.3.x release that changed any of them is refused with the function's name, instead of, e.g.,
  silently dropping ``xsample_val_loss`` or training without the batch's token ids.

The source check runs when a plugin loss is asked for (``--loss`` other than ``clip``, at argument
parsing: arguments.py); ``--loss clip`` runs the stock trainer and is never refused by it.
"""
import hashlib
import inspect
import sys
from typing import Dict, List, NamedTuple, Optional, Tuple

from xsample_openclip import SUPPORTED_OPEN_CLIP, __version__


class Gate(NamedTuple):
    sha256: str        # of inspect.getsource in open-clip-torch 3.3.0
    relied_on_by: str  # which patch (or loss) relies on what in that source; quoted in the refusal


#: Every OpenCLIP function or class whose source the patches (and losses) rely on:
#: (module, attribute path) -> Gate. A new patch that wraps another OpenCLIP function, or relies on
#: how one is written, adds its entry here (the hash: ``source_hash(resolve(module, path))`` with
#: open-clip-torch 3.3.0 installed); tests/test_version_gate.py checks every hash against the
#: installed OpenCLIP, and that every function ``patches/`` wraps has an entry.
GATED: Dict[Tuple[str, str], Gate] = {
    ("open_clip_train.data", "CsvDataset.__init__"): Gate(
        "b07db22cecc0013960752bb735f797ffe0faf29d41432ed8fb6b4fa60bbc7e93",
        "patches/csv_data.py re-implements it line for line, only the CSV reading differs"),
    ("open_clip_train.data", "CsvDataset.__getitem__"): Gate(
        "e1d14bfdef755732c5bbf9d13b2d7438860c141f4fc35c3fd41ba46555d5b061",
        "patches/csv_data.py keeps undecodable image paths as surrogate escapes, which open(str(path)) turns "
        "back into the file's bytes; patches/views.py: the train transform is applied per sample"),
    ("open_clip_train.data", "get_data"): Gate(
        "00efd7c83c9bb8fe61d0d8458ad6288a97c9302356e89fba77db8456507ac12d",
        "patches/views.py wraps it: the first of preprocess_fns must go to the training data only, the "
        "second to validation"),
    ("open_clip_train.data", "get_wds_dataset"): Gate(
        "fed9596654e3cd5945396d4478c920a55baaef1df70673736ec6cc0f99902ca8",
        "patches/views.py: the train transform is applied per sample and the samples are stacked into the batch"),
    ("open_clip_train.data", "get_csv_dataset"): Gate(
        "68b3a9031ec4cae888ae466728628dc86dfee300107501585907ba24a64a75cf",
        "patches/csv_data.py swaps the module's CsvDataset for the call: it must build the dataset "
        "through that global name"),
    ("open_clip_train.data", "get_dataset_fn"): Gate(
        "8e3cfc7608a7a6efd4ca4d4ca664fc4cc932bb9e6ee02f0e3fd03e2b2848c47e",
        "patches/csv_data.py wraps get_csv_dataset, which get_dataset_fn must look up by global name "
        "at call time"),
    ("open_clip_train.data", "DataInfo"): Gate(
        "b79a70a0d57d993e45640bb328c7d05ef4dae2f185eddc5ab16013ead650b981",
        "patches/train_loop.py replaces the data loader with dataclasses.replace(info, dataloader=...)"),
    ("open_clip_train.params", "parse_args"): Gate(
        "238ba0e9e7217fd2161449d9905f1e53ae0cd83dced423ceccbbc1292f659b39",
        "patches/arguments.py adds --loss and the plugin flags to the first ArgumentParser whose "
        "parse_args it calls: it must build and parse exactly one parser"),
    ("open_clip_train.distributed", "init_distributed_device"): Gate(
        "ad4416133f18c620f0aa0028d04a1c2e87cdba7d727fc31e5043af4d9cc6b4cc",
        "patches/startup_checks.py wraps it and reads the args.distributed/rank/world_size/device it sets"),
    ("open_clip_train.distributed", "init_distributed_device_so"): Gate(
        "23609a3557d46f35f071dfd12b97ae70642b2817601ab41c8a942efd8c952b63",
        "patches/startup_checks.py: where init_distributed_device sets those attributes and the process group"),
    ("open_clip_train.distributed", "broadcast_object"): Gate(
        "1d929c5e7841c5a0f386d408d311e12231d5ea96821037b5eaed91fc1fdc889e",
        "patches/startup_checks.py shares rank 0's start-up result with it (rank 0 to all ranks)"),
    ("open_clip_train.train", "train_one_epoch"): Gate(
        "37c2381ee38602e1981a31a141995051fc0eff72abfce384f8440ae6f890b610",
        "patches/train_loop.py and finite.py: the loop takes (images, texts) batches, calls "
        "model(images, texts) and loss(**model_out), concatenates every output key across --accum-freq "
        "micro-batches (re-forwarding the same tensors), reads the loss with .item() at log steps, and its "
        "parameters are named model, data, loss, epoch, scaler, args"),
    ("open_clip_train.train", "evaluate"): Gate(
        "82a886ff1a131bdef9395e781e67f67e8e62c77bdc79a3a00032069919a9951f",
        "patches/evaluation.py: evaluate calls model(images, texts) per validation batch and then the module's "
        "get_clip_metrics once, whose result goes to the log, results.jsonl, tensorboard and wandb "
        "(xsample_val_loss is added there)"),
    ("open_clip_train.main", "main"): Gate(
        "90c2096dcec85aadfa24ab9778477f6deabe30d1503885d164bab2eafd5cfd8b",
        "patches/__init__.py, startup_checks.py, resume.py, finite.py: main parses, calls "
        "init_distributed_device before it makes the log folder, rewrites params.txt, wraps DDP with "
        "device_ids=[device], calls create_loss(args), and saves checkpoints only after train_one_epoch "
        "returns"),
    ("open_clip.loss", "gather_features"): Gate(
        "ec2ca6987af9f0ce470eb54c28fe477576b7786c19531f4dec4c96287ea9ef76",
        "losses/softmax.py gathers the features across ranks with it (ClipLoss semantics)"),
    ("open_clip.loss", "neighbour_exchange"): Gate(
        "514199b8294f58699b6878a76102bd825859315f59c7530073617c2ba9ff8b8c",
        "losses/sigmoid.py exchanges text features between ranks with it (SigLipLoss semantics)"),
    ("open_clip.loss", "neighbour_exchange_bidir"): Gate(
        "af66bcaf059170618895d40c95891d08391f82980bb3ecdc74fc760d2130fdf5",
        "losses/sigmoid.py, as SigLipLoss's bidir exchange"),
    ("open_clip.loss", "neighbour_exchange_with_grad"): Gate(
        "87aa7561f33990685ed17a28f1b6f74116a4b766cde9f80ef05bb04ca5556243",
        "losses/sigmoid.py, as SigLipLoss's exchange with gradients"),
    ("open_clip.loss", "neighbour_exchange_bidir_with_grad"): Gate(
        "f12194ed31d598333bc1bc64c1eb52963a3431d5bc5798ceb4bfb504e572f977",
        "losses/sigmoid.py, as SigLipLoss's bidir exchange with gradients"),
}


def installed_open_clip_version() -> str:
    module = sys.modules.get("open_clip")
    if module is not None and getattr(module, "__version__", None):
        return module.__version__
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("open_clip_torch")
    except PackageNotFoundError:
        return "not installed"


def unsupported_version_message() -> Optional[str]:
    """None if the installed OpenCLIP release is supported, else the refusal text."""
    found = installed_open_clip_version()
    if found.startswith(SUPPORTED_OPEN_CLIP):
        return None
    wanted = " or ".join(f"{v}x" for v in SUPPORTED_OPEN_CLIP)
    return (f"xsample-openclip {__version__} patches OpenCLIP {wanted}, but open-clip-torch {found} is "
            f"installed; install 'open-clip-torch[training]==3.3.0' (pip install -e . pins it) or an "
            f"xsample-openclip release built for {found}")


def source_hash(obj) -> str:
    """sha256 of the source of ``obj``; of the stock function when ``obj`` is a patch's wrapper."""
    return hashlib.sha256(inspect.getsource(inspect.unwrap(obj)).encode()).hexdigest()


def resolve(module_name: str, path: str):
    import importlib

    obj = importlib.import_module(module_name)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def changed_sources(gated: Optional[Dict[Tuple[str, str], Gate]] = None) -> List[str]:
    """A refusal for each gated OpenCLIP function whose source is not the one the patches rely on."""
    changed = []
    for (module_name, path), gate in (GATED if gated is None else gated).items():
        try:
            found = source_hash(resolve(module_name, path))
        except (OSError, TypeError, AttributeError, ImportError):
            found = "unavailable"
        if found != gate.sha256:
            changed.append(
                f"{module_name}.{path} in open-clip-torch {installed_open_clip_version()} is not the 3.3.0 "
                f"code that xsample-openclip {__version__} relies on ({gate.relied_on_by}; source sha256 "
                f"{found[:12]}, expected {gate.sha256[:12]}); install 'open-clip-torch[training]==3.3.0' or an "
                "xsample-openclip release built for this OpenCLIP (--loss clip still runs the stock trainer)")
    return changed
