"""Whether the installed OpenCLIP is a release these patches were written and tested for.

Two checks, both cheap and both run only once OpenCLIP itself is being imported or used:
- the release (``open_clip.__version__``; the package metadata only if OpenCLIP is not imported) must be
  in ``SUPPORTED_OPEN_CLIP`` (xsample_openclip/__init__.py);
- the source of every OpenCLIP function (or class) whose code the patches rely on, not only the ones
  they re-implement: the functions they wrap (how ``train_one_epoch`` calls the model and the loss,
  that ``evaluate`` calls ``get_clip_metrics``, ...), the ones whose call order they rely on (``main``),
  the helpers the losses call and the augmentation code the two views are made of. ``GATED`` lists
  them, each with what relies on it; ``SOURCES`` holds one table per supported release: the sha256 of
  ``inspect.getsource`` (of the stock function under a patch's wrapper) in that release, or ``ABSENT``
  where the release lacks it (its other gated code does not use it, or a shim named after the release
  covers that: ``openclip_3_0_0.py``).
  A release is checked against its own table; a release of the range without one (a later 3.3.x)
  against the newest table of its minor series. Any other source (a fork, a changed later release) is
  refused with the function's name, instead of, e.g., silently dropping ``xsample_val_loss`` or
  training without the batch's token ids.

The source check runs when a plugin loss is asked for (``--loss`` other than ``clip``, at argument
parsing: arguments.py) or ``--xsample-locked-text-cache`` is given; ``--loss clip`` alone runs the stock
trainer and is never refused by it.
"""
import hashlib
import importlib
import inspect
import re
import sys
from typing import Dict, List, Optional, Tuple

from xsample_openclip import SUPPORTED_OPEN_CLIP, __version__

Entry = Tuple[str, str]  # (module, attribute path)

#: Every OpenCLIP function or class whose source the patches (and losses) rely on, with what relies on
#: what in that source (quoted in the refusal). A new patch that wraps another OpenCLIP function, or
#: relies on how one is written, adds its entry here and its hash to every release's table (the hash:
#: ``source_hash(resolve(module, path))`` with that release installed); tests/test_version_gate.py checks
#: the installed release's hashes, that every table covers exactly these entries, and that every function
#: ``patches/`` wraps has an entry.
GATED: Dict[Entry, str] = {
    ("open_clip_train.data", "CsvDataset.__init__"):
        "patches/csv_data.py re-implements it line for line, only the CSV reading differs",
    ("open_clip_train.data", "CsvDataset.__getitem__"):
        "patches/csv_data.py keeps undecodable image paths as surrogate escapes, which open(str(path)) turns "
        "back into the file's bytes; patches/views.py: the train transform is applied per sample",
    ("open_clip_train.data", "get_data"):
        "patches/views.py wraps it: the first of preprocess_fns must go to the training data only, the "
        "second to validation",
    ("open_clip_train.data", "get_wds_dataset"):
        "patches/views.py: the train transform is applied per sample and the samples are stacked into the batch",
    ("open_clip_train.data", "get_csv_dataset"):
        "patches/csv_data.py swaps the module's CsvDataset for the call: it must build the dataset "
        "through that global name",
    ("open_clip_train.data", "get_dataset_fn"):
        "patches/csv_data.py wraps get_csv_dataset, which get_dataset_fn must look up by global name "
        "at call time",
    ("open_clip_train.data", "DataInfo"):
        "patches/train_loop.py replaces the data loader with dataclasses.replace(info, dataloader=...)",
    ("open_clip_train.params", "parse_args"):
        "patches/arguments.py adds --loss and the plugin flags to the first ArgumentParser whose "
        "parse_args it calls: it must build and parse exactly one parser",
    ("open_clip_train.distributed", "init_distributed_device"):
        "patches/startup_checks.py wraps it and reads the args.distributed/rank/world_size/device it sets",
    ("open_clip_train.distributed", "init_distributed_device_so"):
        "patches/startup_checks.py: where init_distributed_device sets those attributes and the process group",
    ("open_clip_train.distributed", "broadcast_object"):
        "patches/startup_checks.py shares rank 0's start-up result with it (rank 0 to all ranks)",
    ("open_clip_train.train", "train_one_epoch"):
        "patches/train_loop.py and finite.py: the loop takes (images, texts) batches, calls "
        "model(images, texts) and loss(**model_out), concatenates every output key across --accum-freq "
        "micro-batches (re-forwarding the same tensors), reads the loss with .item() at log steps, and its "
        "parameters are named model, data, loss, epoch, scaler, args",
    ("open_clip_train.train", "evaluate"):
        "patches/evaluation.py: evaluate calls model(images, texts) per validation batch and then the module's "
        "get_clip_metrics once, whose result goes to the log, results.jsonl, tensorboard and wandb "
        "(xsample_val_loss is added there)",
    ("open_clip_train.main", "main"):
        "patches/__init__.py, startup_checks.py, resume.py, finite.py: main parses, calls "
        "init_distributed_device before it makes the log folder, rewrites params.txt, wraps DDP with "
        "device_ids=[device], calls create_loss(args), and saves checkpoints only after train_one_epoch "
        "returns",
    ("open_clip.loss", "gather_features"):
        "losses/softmax.py gathers the features across ranks with it (ClipLoss semantics)",
    ("open_clip.loss", "neighbour_exchange"):
        "losses/sigmoid.py exchanges text features between ranks with it (SigLipLoss semantics)",
    ("open_clip.loss", "neighbour_exchange_bidir"):
        "losses/sigmoid.py, as SigLipLoss's bidir exchange",
    ("open_clip.loss", "neighbour_exchange_with_grad"):
        "losses/sigmoid.py, as SigLipLoss's exchange with gradients",
    ("open_clip.loss", "neighbour_exchange_bidir_with_grad"):
        "losses/sigmoid.py, as SigLipLoss's bidir exchange with gradients",
    ("open_clip.transform", "image_transform"):
        "xsample_openclip/views.py and patches/views.py: with is_train it builds the train transform whose "
        "crop takes AugmentationCfg.scale and which applies colour jitter with color_jitter_prob and grayscale "
        "with gray_scale_prob; each view is that transform applied anew to the same image",
    ("open_clip.transform", "image_transform_v2"):
        "xsample_openclip/views.py: create_model_and_transforms builds the train transform through it, "
        "passing --aug-cfg (completed with SimCLR's values by the two-view start-up) to image_transform",
    ("open_clip.transform", "AugmentationCfg"):
        "xsample_openclip/views.py: SIMCLR_AUG sets its scale, color_jitter, color_jitter_prob and "
        "gray_scale_prob keys, with the meaning and defaults this class gives them",
    ("open_clip.transform", "color_jitter"):
        "xsample_openclip/views.py: color_jitter_prob is the probability that this transform jitters a view",
    ("open_clip.transform", "gray_scale"):
        "xsample_openclip/views.py: gray_scale_prob is the probability that this transform greys a view",
    ("open_clip.transform", "_convert_to_rgb"):
        "xsample_openclip/views.py: up to 3.2.x, image_transform converts each view's image to RGB with it",
    ("open_clip.transform", "MaybeConvertMode"):
        "xsample_openclip/views.py: from 3.3.0, image_transform converts each view's PIL image to RGB with it",
    ("open_clip.transform", "MaybeToTensor"):
        "xsample_openclip/views.py: from 3.3.0, image_transform turns each view into a tensor with it",
    ("open_clip.model", "CLIP.lock_text_tower"):
        "--loss xclr (plugins.py): main freezes the text tower with it under the required --lock-text, and "
        "it asserts --lock-text-freeze-layer-norm",
    ("open_clip.transformer", "lock_text_tower"):
        "--loss xclr: CLIP.lock_text_tower freezes every text-tower parameter with it "
        "(--lock-text-unlocked-layers 0)",
    ("open_clip.hf_model", "HFTextEncoder.forward"):
        "patches/locked_text.py (--xsample-locked-text-cache) replaces it by proj(pooler(transformer(ids, "
        "mask), mask)) with mask = ids != pad_token_id, the pooled features cached",
    ("open_clip_train.train", "unwrap_model"):
        "patches/locked_text.py finds the text tower of a DDP-wrapped model through it",
}

#: In a release's table: the release has no such attribute (its other gated code does not use it, or
#: a shim for that release covers its absence).
ABSENT = "absent"

_OPEN_CLIP_3_3_0: Dict[Entry, str] = {
    ("open_clip_train.data", "CsvDataset.__init__"):
        "b07db22cecc0013960752bb735f797ffe0faf29d41432ed8fb6b4fa60bbc7e93",
    ("open_clip_train.data", "CsvDataset.__getitem__"):
        "e1d14bfdef755732c5bbf9d13b2d7438860c141f4fc35c3fd41ba46555d5b061",
    ("open_clip_train.data", "get_data"):
        "00efd7c83c9bb8fe61d0d8458ad6288a97c9302356e89fba77db8456507ac12d",
    ("open_clip_train.data", "get_wds_dataset"):
        "fed9596654e3cd5945396d4478c920a55baaef1df70673736ec6cc0f99902ca8",
    ("open_clip_train.data", "get_csv_dataset"):
        "68b3a9031ec4cae888ae466728628dc86dfee300107501585907ba24a64a75cf",
    ("open_clip_train.data", "get_dataset_fn"):
        "8e3cfc7608a7a6efd4ca4d4ca664fc4cc932bb9e6ee02f0e3fd03e2b2848c47e",
    ("open_clip_train.data", "DataInfo"):
        "b79a70a0d57d993e45640bb328c7d05ef4dae2f185eddc5ab16013ead650b981",
    ("open_clip_train.params", "parse_args"):
        "238ba0e9e7217fd2161449d9905f1e53ae0cd83dced423ceccbbc1292f659b39",
    ("open_clip_train.distributed", "init_distributed_device"):
        "ad4416133f18c620f0aa0028d04a1c2e87cdba7d727fc31e5043af4d9cc6b4cc",
    ("open_clip_train.distributed", "init_distributed_device_so"):
        "23609a3557d46f35f071dfd12b97ae70642b2817601ab41c8a942efd8c952b63",
    ("open_clip_train.distributed", "broadcast_object"):
        "1d929c5e7841c5a0f386d408d311e12231d5ea96821037b5eaed91fc1fdc889e",
    ("open_clip_train.train", "train_one_epoch"):
        "37c2381ee38602e1981a31a141995051fc0eff72abfce384f8440ae6f890b610",
    ("open_clip_train.train", "evaluate"):
        "82a886ff1a131bdef9395e781e67f67e8e62c77bdc79a3a00032069919a9951f",
    ("open_clip_train.main", "main"):
        "90c2096dcec85aadfa24ab9778477f6deabe30d1503885d164bab2eafd5cfd8b",
    ("open_clip.loss", "gather_features"):
        "ec2ca6987af9f0ce470eb54c28fe477576b7786c19531f4dec4c96287ea9ef76",
    ("open_clip.loss", "neighbour_exchange"):
        "514199b8294f58699b6878a76102bd825859315f59c7530073617c2ba9ff8b8c",
    ("open_clip.loss", "neighbour_exchange_bidir"):
        "af66bcaf059170618895d40c95891d08391f82980bb3ecdc74fc760d2130fdf5",
    ("open_clip.loss", "neighbour_exchange_with_grad"):
        "87aa7561f33990685ed17a28f1b6f74116a4b766cde9f80ef05bb04ca5556243",
    ("open_clip.loss", "neighbour_exchange_bidir_with_grad"):
        "f12194ed31d598333bc1bc64c1eb52963a3431d5bc5798ceb4bfb504e572f977",
    ("open_clip.transform", "image_transform"):
        "6ad5629551bb008ffbfbb2df0721ace23f78b9c0b13fa3a0f74605e3f276eb21",
    ("open_clip.transform", "image_transform_v2"):
        "c9953d17c15c07819260d5137ad0d224062ae2f345995bfeb07ad0504baa6bc4",
    ("open_clip.transform", "AugmentationCfg"):
        "973854922db619481bad222838b9e03abe7d7e614e50d6dbabbb78849f557b46",
    ("open_clip.transform", "color_jitter"):
        "81854dbfcee48e69cfb2e9fa5e2b9c251a5130ecbe397f5ee34e53723cdfc3f0",
    ("open_clip.transform", "gray_scale"):
        "1af59f7c36403059672659a06f85f4428623416b29b3c54aca24cc87ba885964",
    ("open_clip.transform", "_convert_to_rgb"):
        "4d42af1bb1e8a623043175d20e96c09128bcb6831ef88df26fb9d84762ec8a60",
    ("open_clip.transform", "MaybeConvertMode"):
        "b9b9d9486cc4a57c78af197f7c686e55cffbe402139bb3a8694dab482563cc67",
    ("open_clip.transform", "MaybeToTensor"):
        "ddc3733f9f87a3bc93c56f533a16770876c42006825ad0f34509c3d828367d27",
    ("open_clip.model", "CLIP.lock_text_tower"):
        "91adddce22a46b021c1d636d3d05a4d6e641a23bd081b9cb0b29d4a322d24281",
    ("open_clip.transformer", "lock_text_tower"):
        "8743728eb8ab46f031a4f7e8a8c60068a7d414b82cdc645c1beef4d7af48a61f",
    ("open_clip.hf_model", "HFTextEncoder.forward"):
        "53c1361da876a7b7a651b6a92b0354365235c3f4c79f34facc302373b10b8506",
    ("open_clip_train.train", "unwrap_model"):
        "2bf62c0287050bdd0c9163ac64099e0f6d58e196b81667430f2bb11312b77c59",
}

#: One table of source hashes per supported release (each derived from the next one, so what changed
#: between releases is what is written out).
SOURCES: Dict[str, Dict[Entry, str]] = {"3.3.0": _OPEN_CLIP_3_3_0}
#: 3.2.0: evaluate does not yet unwrap DDP before validating, main has no barrier() after evaluation
#: and checkpointing, image_transform converts with _convert_to_rgb and ToTensor (MaybeConvertMode and
#: MaybeToTensor do not exist yet; they do the same for the PIL images both loaders give it).
SOURCES["3.2.0"] = {
    **SOURCES["3.3.0"],
    ("open_clip_train.train", "evaluate"): "0d304dd95ef95bfe7c08fbeed58ccdd46b782ef5c7132232aae23cf01e0b8340",
    ("open_clip_train.main", "main"): "93a37a37f8bc05ff49c50ecc98aa4ca9f030f78684d3d6a07cfda839ab37ce45",
    ("open_clip.transform", "image_transform"): "e851de3fea061e323f7f8812e6e3e00281affd57202e9bb5353ef6b5e191e57a",
    ("open_clip.transform", "MaybeConvertMode"): ABSENT,
    ("open_clip.transform", "MaybeToTensor"): ABSENT,
}
#: 3.1.0: every gated source as in 3.2.0.
SOURCES["3.1.0"] = dict(SOURCES["3.2.0"])
#: 3.0.0: as 3.1.0, but CLIP has no lock_text_tower yet (openclip_3_0_0.py refuses --lock-text with it).
SOURCES["3.0.0"] = {
    **SOURCES["3.1.0"],
    ("open_clip.model", "CLIP.lock_text_tower"): ABSENT,
    ("open_clip.transformer", "lock_text_tower"): ABSENT,
}


def supported_bounds() -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """``SUPPORTED_OPEN_CLIP`` (">=A.B,<C.D") as ((A, B), (C, D))."""
    match = re.fullmatch(r">=(\d+)\.(\d+),<(\d+)\.(\d+)", SUPPORTED_OPEN_CLIP)
    if match is None:
        raise ValueError(f"SUPPORTED_OPEN_CLIP must read '>=A.B,<C.D', not {SUPPORTED_OPEN_CLIP!r}")
    a, b, c, d = map(int, match.groups())
    return (a, b), (c, d)


def supported_text() -> str:
    """The range in words, for messages and docs: e.g. 'open-clip-torch 3.0.0 through 3.3.x'."""
    (a, b), (c, d) = supported_bounds()
    last = f"{c}.{d - 1}.x" if d > 0 else f"{c - 1}.x"
    return f"open-clip-torch {a}.{b}.0 through {last}"


def _fix() -> str:
    return (f"install a supported release, e.g. pip install 'open-clip-torch[training]{SUPPORTED_OPEN_CLIP}', "
            "or an xsample-openclip release built for this OpenCLIP")


def installed_open_clip_version() -> str:
    module = sys.modules.get("open_clip")
    if module is not None and getattr(module, "__version__", None):
        return module.__version__
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("open_clip_torch")
    except PackageNotFoundError:
        return "not installed"


def _minor(release: str) -> Optional[Tuple[int, int]]:
    match = re.match(r"(\d+)\.(\d+)\.\d+", release)
    return (int(match.group(1)), int(match.group(2))) if match else None


def reference_release(found: Optional[str] = None) -> Optional[str]:
    """The release whose table ``found`` is checked against: its own, else the newest of its minor series
    (3.3.1 -> 3.3.0); None outside the supported range."""
    found = installed_open_clip_version() if found is None else found
    minor = _minor(found)
    low, high = supported_bounds()
    if minor is None or not low <= minor < high:
        return None
    if found in SOURCES:
        return found
    series = sorted((r for r in SOURCES if _minor(r) == minor), key=lambda r: tuple(map(int, r.split("."))))
    return series[-1] if series else None


def unsupported_version_message() -> Optional[str]:
    """None if the installed OpenCLIP release is supported, else the refusal text."""
    found = installed_open_clip_version()
    if reference_release(found) is not None:
        return None
    return (f"xsample-openclip {__version__} patches {supported_text()}, but open-clip-torch {found} is "
            f"installed; {_fix()} (without --loss and the --xsample-* flags, OpenCLIP trains as it does "
            "without the plugin)")


def source_hash(obj) -> str:
    """sha256 of the source of ``obj``; of the stock function when ``obj`` is a patch's wrapper."""
    return hashlib.sha256(inspect.getsource(inspect.unwrap(obj)).encode()).hexdigest()


def resolve(module_name: str, path: str):
    obj = importlib.import_module(module_name)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _found_hash(module_name: str, path: str) -> str:
    try:
        obj = resolve(module_name, path)
    except AttributeError:
        return ABSENT
    try:
        return source_hash(obj)
    except (OSError, TypeError):
        return "unavailable"


def changed_sources(sources: Optional[Dict[str, Dict[Entry, str]]] = None) -> List[str]:
    """A refusal for each gated OpenCLIP function whose source is not the one the patches rely on in the
    installed release (checked against that release's table in ``sources``, default ``SOURCES``)."""
    found_release = installed_open_clip_version()
    reference = reference_release(found_release)
    if reference is None:
        return [unsupported_version_message()]
    table = (SOURCES if sources is None else sources)[reference]
    changed = []
    for (module_name, path), relied_on_by in GATED.items():
        expected = table[(module_name, path)]
        found = _found_hash(module_name, path)
        if found != expected:
            changed.append(
                f"{module_name}.{path} in open-clip-torch {found_release} is not the open-clip-torch {reference} "
                f"code that xsample-openclip {__version__} relies on ({relied_on_by}; source sha256 {found[:12]}, "
                f"expected {expected[:12]}); xsample-openclip supports {supported_text()} with their published "
                f"sources: {_fix()} (--loss clip still runs the stock trainer)")
    return changed


#: Release -> the shim modules (in patches/, each named by the releases that need it) covering what that
#: release lacks or does otherwise: ``refusals(args)`` (what it cannot run, refused at parsing) and
#: ``validation_model(model, args)`` (what its ``evaluate`` is given), where defined.
SHIMS: Dict[str, Tuple[str, ...]] = {
    "3.0.0": ("openclip_3_0_0", "openclip_3_0_to_3_2"),
    "3.1.0": ("openclip_3_0_to_3_2",),
    "3.2.0": ("openclip_3_0_to_3_2",),
}


def _shims(hook: str) -> list:
    names = SHIMS.get(reference_release() or "", ())
    return [getattr(m, hook) for m in (importlib.import_module(f"{__package__}.{n}") for n in names)
            if hasattr(m, hook)]


def release_refusals(args) -> List[str]:
    """What the installed release cannot run of ``args`` (a plugin loss's), from its shims; [] if none."""
    return [problem for refusals in _shims("refusals") for problem in refusals(args)]


def release_validation_model(model, args):
    """The model to hand the installed release's ``evaluate`` for a plugin loss's validation."""
    for adapt in _shims("validation_model"):
        model = adapt(model, args)
    return model
