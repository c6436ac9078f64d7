"""Speed and scale of the X-Sample loss against stock OpenCLIP, measured side by side in one run.

    python -m xsample_openclip.bench                   # CPU defaults: about 5 minutes on 2 cores
    python -m xsample_openclip.bench --quick           # smoke run, about a minute
    python -m xsample_openclip.bench --device cuda     # GPU: adds local batch 16384, bf16 everywhere, ViT-B-32

Sections (``--sections``, default all):
  loss        forward+backward time and peak memory of ``XSampleLoss`` vs OpenCLIP's ``ClipLoss`` per
              local batch size, embedding width and precision (bf16 = the loss under
              ``torch.autocast(bfloat16)``, as ``--precision amp_bf16`` runs it); ratios X-Sample/ClipLoss.
  scale       per-rank memory of ``--local-loss --gather-with-grad`` at large world sizes, simulated in one
              process by feeding both losses the gathered tensors a rank would receive.
  targets     caption-target cost: MiniLM embeddings/s, target building per batch (online encoder with
              a cold and a warm cache, precomputed table) as a share of a training step of a real model,
              and LRU cache hit rates over epochs.
  e2e         OpenCLIP's own trainer (subprocess), same data and model: ``--loss clip`` vs ``--loss
              xsample`` (online encoder, and a precomputed table); step times parsed from out.log.
  precompute  ``python -m xsample_openclip.precompute`` throughput on generated webdataset shards
              (scan and embedding rates, table size, memory per caption) and its missing-caption check.

Method: timings are medians over repeats after a warm-up, with X-Sample and ClipLoss interleaved (ABBA)
so that contention from other jobs hits both; the load average is printed. Peak memory is what the
allocator hands out during one forward+backward beyond what was allocated before it: on CUDA
``torch.cuda.max_memory_allocated``; on CPU the allocation/free events that ``torch.profiler``
(``profile_memory=True``) records for every tensor, replayed in order. Both count every tensor the
loss creates (saved activations, temporaries, gradients), not the pre-existing inputs.
"""
import argparse
import contextlib
import datetime
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SECTIONS = ("loss", "scale", "targets", "e2e", "precompute")
MIB = 2 ** 20
GOAL_TIME, GOAL_MEMORY, GOAL_TABLE_SHARE, GOAL_ONLINE_SHARE_GPU = 1.15, 1.2, 0.02, 0.10


# --- small utilities ---------------------------------------------------------------------------

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device):
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _median(values):
    return statistics.median(values) if values else float("nan")


def peak_memory(fn, device) -> int:
    """Bytes allocated at the peak of ``fn()`` beyond what was allocated when it started."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        events = json.loads(Path(path).read_text())["traceEvents"]
    current = peak = 0
    for event in sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: float(e["ts"])):
        args = event.get("args", {})
        if args.get("Device Type", 0) != 0:
            continue
        current += int(args["Bytes"])
        peak = max(peak, current)
    return peak


def table(headers, rows) -> str:
    """A Markdown table."""
    cells = [[str(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def _load():
    try:
        return "load average %.2f, %.2f, %.2f" % os.getloadavg()
    except OSError:
        return "load average unknown"


def _cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _say(text=""):
    print(text, flush=True)


def unit_rows(n, d, device, generator, dtype=torch.float32):
    return F.normalize(torch.randn(n, d, generator=generator, device="cpu"), dim=-1).to(device, dtype)


# --- section: loss ------------------------------------------------------------------------------

def _loss_step(loss_fn, image, text, scale, captions, autocast_dtype):
    i = image.detach().requires_grad_(True)
    t = text.detach().requires_grad_(True)
    s = scale.detach().requires_grad_(True)
    with torch.autocast(image.device.type, dtype=autocast_dtype or torch.bfloat16,
                        enabled=autocast_dtype is not None):
        if captions is None:
            loss = loss_fn(i, t, s)
        else:
            loss = loss_fn(i, t, s, caption_embeddings=captions)
    loss.backward()
    return loss.detach()


def _compare(run_clip, run_xs, device, repeats, budget_s=None):
    """Peak memory of each (the profiled first call doubles as warm-up), then interleaved timings:
    ``repeats`` pairs, fewer (at least 2) where the first pair shows they would exceed ``budget_s``."""
    start = time.perf_counter()
    mem_clip, mem_xs = peak_memory(run_clip, device), peak_memory(run_xs, device)
    if budget_s:
        repeats = max(2, min(repeats, int(budget_s / max(time.perf_counter() - start, 1e-9))))
    if device.type == "cuda":  # a plain warm-up as well: the first CUDA calls pick kernels
        run_clip(), run_xs()
    times = {"clip": [], "xs": []}
    for r in range(repeats):
        order = (("clip", run_clip), ("xs", run_xs)) if r % 2 == 0 else (("xs", run_xs), ("clip", run_clip))
        for name, fn in order:
            times[name].append(_timed(fn, device))
    return mem_clip, mem_xs, _median(times["clip"]), _median(times["xs"]), repeats


def bench_loss(args, device, results):
    from open_clip.loss import ClipLoss

    from .loss import XSampleLoss

    _say(f"## Loss forward+backward: X-Sample vs ClipLoss (one process, {device.type}, {_load()})\n")
    rows, records = [], []
    g = torch.Generator().manual_seed(0)
    for dtype_name in args.dtypes:
        autocast_dtype = torch.bfloat16 if dtype_name == "bf16" else None
        for width in args.widths:
            for n in args.sizes:
                if autocast_dtype is not None and args.bf16_max_size and n > args.bf16_max_size:
                    rows.append([dtype_name, width, n, "skipped (--bf16-max-size)", "", "", "", "", "", ""])
                    continue
                image, text = unit_rows(n, width, device, g), unit_rows(n, width, device, g)
                captions = unit_rows(n, 384, device, g)
                scale = torch.tensor(50.0, device=device)
                clip_fn, xs_fn = ClipLoss(), XSampleLoss(tau_s=0.1)
                mem_c, mem_x, t_c, t_x, repeats = _compare(
                    lambda: _loss_step(clip_fn, image, text, scale, None, autocast_dtype),
                    lambda: _loss_step(xs_fn, image, text, scale, captions, autocast_dtype),
                    device, args.repeats, args.case_budget)
                tr, mr = t_x / t_c, mem_x / max(mem_c, 1)
                ok = "yes" if tr <= GOAL_TIME and mr <= GOAL_MEMORY else \
                    ("time" if tr > GOAL_TIME and mr <= GOAL_MEMORY else ("memory" if tr <= GOAL_TIME else "both"))
                ok = ok if ok == "yes" else f"MISSED ({ok})"
                rows.append([dtype_name, width, n, f"{t_c * 1e3:.1f}", f"{t_x * 1e3:.1f}", f"**{tr:.2f}**",
                             f"{mem_c / MIB:.1f}", f"{mem_x / MIB:.1f}", f"**{mr:.2f}**", ok])
                records.append(dict(dtype=dtype_name, width=width, n=n, clip_s=t_c, xsample_s=t_x, time_ratio=tr,
                                    clip_bytes=mem_c, xsample_bytes=mem_x, memory_ratio=mr, repeats=repeats))
                del image, text, captions
    _say(table(["precision", "width", "local batch", "ClipLoss ms", "X-Sample ms", "time ratio",
                "ClipLoss peak MiB", "X-Sample peak MiB", "memory ratio",
                f"goals (<= {GOAL_TIME}x time, <= {GOAL_MEMORY}x memory)"], rows))
    _say(f"\n({_load()} at the end of the section)\n")
    results["loss"] = records


# --- section: scale -----------------------------------------------------------------------------

@contextlib.contextmanager
def simulated_rank(rank, world_size, local_batch, device, seed=0):
    """Replace OpenCLIP's ``gather_features`` (used by ClipLoss and XSampleLoss) with one that returns
    what rank ``rank`` of ``world_size`` would receive: fixed random rows for the other ranks around the
    live local tensor, with the same gradient rules (with ``local_loss`` and without
    ``gather_with_grad`` every gathered column is detached)."""
    import open_clip.loss as oc_loss

    from . import loss as xs_loss

    others = {}
    g = torch.Generator().manual_seed(seed)

    def full(x, role, local_loss, gather_with_grad):
        key = (role, x.shape[1], x.dtype)
        if key not in others:
            others[key] = unit_rows((world_size - 1) * local_batch, x.shape[1], device, g, x.dtype)
        rest = others[key]
        live = x.detach() if (local_loss and not gather_with_grad) else x
        cut = rank * local_batch
        return torch.cat([rest[:cut], live, rest[cut:]])

    def fake_gather(image_features, text_features, local_loss=False, gather_with_grad=False, rank=0,
                    world_size=1, use_horovod=False):
        if image_features is text_features:  # the caption embeddings (gathered without gradient)
            out = full(image_features, "captions", True, False)
            return out, out
        return (full(image_features, "image", local_loss, gather_with_grad),
                full(text_features, "text", local_loss, gather_with_grad))

    stock = oc_loss.gather_features
    oc_loss.gather_features = xs_loss.gather_features = fake_gather
    try:
        yield
    finally:
        oc_loss.gather_features = xs_loss.gather_features = stock


def bench_scale(args, device, results):
    from open_clip.loss import ClipLoss

    from .loss import XSampleLoss

    n, width = args.scale_local, args.scale_width
    _say(f"## Per-rank memory at scale: --local-loss --gather-with-grad, local batch {n}, width {width}, "
         f"fp32, simulated ranks ({device.type}, {_load()})\n")
    rows, records = [], []
    g = torch.Generator().manual_seed(1)
    for world in args.scale_worlds:
        rank = world // 2
        big = n * world
        image, text = unit_rows(n, width, device, g), unit_rows(n, width, device, g)
        captions = unit_rows(n, 384, device, g)
        scale = torch.tensor(50.0, device=device)
        kw = dict(local_loss=True, gather_with_grad=True, rank=rank, world_size=world)
        clip_fn, xs_fn = ClipLoss(**kw), XSampleLoss(tau_s=0.1, **kw)
        with simulated_rank(rank, world, n, device):
            mem_c, mem_x, t_c, t_x, _ = _compare(
                lambda: _loss_step(clip_fn, image, text, scale, None, None),
                lambda: _loss_step(xs_fn, image, text, scale, captions, None), device, args.scale_repeats,
                args.case_budget)
        gathered = big * (2 * width + 384) * 4 if world > 1 else 0
        rows.append([world, big, f"{mem_c / MIB:.1f}", f"{mem_x / MIB:.1f}", f"{mem_x / mem_c:.2f}",
                     f"{t_x / t_c:.2f}", f"{gathered / MIB:.1f}",
                     f"{(mem_x - gathered) / (n * big):.1f}", f"{big * big * 4 / MIB:,.0f}"])
        records.append(dict(world_size=world, global_batch=big, clip_bytes=mem_c, xsample_bytes=mem_x,
                            clip_s=t_c, xsample_s=t_x, gathered_bytes=gathered))
    _say(table(["world size", "global batch N", "ClipLoss MiB/rank", "X-Sample MiB/rank", "memory ratio",
                "time ratio", "gathered features+captions MiB (in both)",
                "X-Sample bytes per n*N element (beyond the gathered rows)",
                "one global N*N fp32 matrix MiB (not allocated)"], rows))
    _say("\nPer-rank memory grows with local x global batch (the last-but-one column stays flat as N grows); "
         "no N x N matrix exists on any rank. Semantics of the real gather (gloo, 2 processes, every "
         "OpenCLIP gather mode) are checked in tests/test_distributed.py.\n")
    results["scale"] = records


# --- section: targets ---------------------------------------------------------------------------

class _NullEncoder:
    """A free stand-in encoder (cache hit-rate simulation only)."""

    name, dim = "null", 8

    def encode(self, texts):
        return torch.zeros(len(texts), self.dim)


def cache_hit_rates(tokenizer, distinct, epochs, batch, cache_sizes, seed=0):
    """Hit rate of ``OnlineCaptionEmbeddings`` over ``epochs`` shuffled passes of ``distinct`` captions."""
    from .bench_data import text_captions
    from .captions import OnlineCaptionEmbeddings, TokenDecoder

    tokens = tokenizer(text_captions(distinct, seed=seed + 7))
    out = {}
    for size in cache_sizes:
        emb = OnlineCaptionEmbeddings(TokenDecoder(tokenizer), _NullEncoder(), cache_size=size)
        g = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            order = torch.randperm(distinct, generator=g)
            for start in range(0, distinct - batch + 1, batch):
                emb(tokens[order[start:start + batch]])
        out[size] = emb.hits / max(emb.hits + emb.misses, 1)
    return out


def bench_targets(args, device, results, work):
    import open_clip

    from . import model_configs
    from .bench_data import text_captions
    from .captions import OnlineCaptionEmbeddings, TableCaptionEmbeddings, TokenDecoder, token_keys
    from .encoders import SentenceEncoder
    from .loss import XSampleLoss
    from .table import EmbeddingTable, write_table
    from open_clip.loss import ClipLoss

    model_configs.register()
    model_name, batch = args.target_model, args.target_batch
    amp = device.type == "cuda"
    _say(f"## Caption targets: cost per training step ({model_name}, batch {batch}, {device.type}"
         f"{', amp bf16' if amp else ', fp32'}, {_load()})\n")

    encoder = SentenceEncoder(device=str(device))
    k = args.minilm_captions
    caps = text_captions(k + 64 + batch * args.target_batches, seed=1)
    encoder.encode(caps[:64])
    t = _timed(lambda: encoder.encode(caps[64:64 + k]), device)
    rate = k / t
    where = f"{args.threads} CPU thread(s)" if device.type == "cpu" else device.type
    _say(f"- Packaged all-MiniLM-L6-v2 on {where}: **{rate:,.0f} captions/s** ({k} distinct generated "
         f"captions of ~10 words, batches of {encoder.batch_size}, {t:.2f} s)")
    rate_all = None
    cores = os.cpu_count() or 1
    if device.type == "cpu" and cores > args.threads:
        torch.set_num_threads(cores)
        try:
            t_all = _timed(lambda: encoder.encode(caps[64:64 + k]), device)
        finally:
            torch.set_num_threads(args.threads)
        rate_all = k / t_all
        _say(f"- The same on all {cores} CPU threads: **{rate_all:,.0f} captions/s**")

    tokenizer = open_clip.get_tokenizer(model_name)
    step_caps = caps[64 + k:]
    tokens = tokenizer(step_caps).to(device)
    nb = args.target_batches
    online = OnlineCaptionEmbeddings(TokenDecoder(tokenizer), encoder, cache_size=100_000)
    online(tokens[:batch])  # warm-up of the code path (these captions are not reused below)
    cold, warm, table_t, embs = [], [], [], []
    for j in range(1, nb):
        bt = tokens[j * batch:(j + 1) * batch]
        _sync(device)
        t0 = time.perf_counter()
        e = online(bt)
        _sync(device)
        cold.append(time.perf_counter() - t0)
        embs.append(e.cpu())
        warm.append(_timed(lambda: online(bt), device))
    keys = token_keys(tokens[batch:nb * batch].cpu())
    path = Path(work) / "target_table"
    write_table(path, keys, torch.cat(embs).numpy().astype("float16"),
                {"encoder": encoder.name, "model": model_name, "tokenizer": type(tokenizer).__name__,
                 "context_length": int(getattr(tokenizer, "context_length", 0) or 0)})
    lookup = TableCaptionEmbeddings(EmbeddingTable(path))
    for j in range(1, nb):
        bt = tokens[j * batch:(j + 1) * batch]
        table_t.append(_timed(lambda: lookup(bt), device))

    model = open_clip.create_model(model_name, device=device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    size = model.visual.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, *size, generator=g).to(device)
    step_tokens = tokens[batch:2 * batch]
    step_caps_emb = embs[0].to(device)
    xs_fn, clip_fn = XSampleLoss(tau_s=0.1), ClipLoss()

    def step(loss_fn, with_captions):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            img_f, txt_f, scale = model(images, step_tokens)[:3]
            if with_captions:
                loss = loss_fn(img_f, txt_f, scale, caption_embeddings=step_caps_emb)
            else:
                loss = loss_fn(img_f, txt_f, scale)
        loss.backward()
        opt.step()

    step(clip_fn, False), step(xs_fn, True)
    t_clip, t_xs = [], []
    for r in range(args.target_steps):
        for name, fn in ((("clip", lambda: step(clip_fn, False)), ("xs", lambda: step(xs_fn, True)))
                         if r % 2 == 0 else (("xs", lambda: step(xs_fn, True)), ("clip", lambda: step(clip_fn, False)))):
            (t_clip if name == "clip" else t_xs).append(_timed(fn, device))
    step_s, clip_s = _median(t_xs), _median(t_clip)
    c, w, tb = _median(cold), _median(warm), _median(table_t)

    def share(x):
        return x / (step_s + x)

    rows = [
        ["online encoder, cache cold (every caption new: first epoch)", f"{c * 1e3:.1f}", f"{share(c):.1%}"],
        ["online encoder, cache warm (every caption seen: later epochs)", f"{w * 1e3:.2f}", f"{share(w):.2%}"],
        ["precomputed table (memory-mapped, float16)", f"{tb * 1e3:.2f}", f"**{share(tb):.2%}**"],
    ]
    _say(f"- Training step without target building: X-Sample {step_s * 1e3:.0f} ms, ClipLoss {clip_s * 1e3:.0f} ms "
         f"(ratio {step_s / clip_s:.2f}; forward, loss, backward, AdamW; median of {args.target_steps})\n")
    _say(table(["target building", "ms per batch", "share of the step"], rows))
    rates = cache_hit_rates(tokenizer, args.cache_distinct, 3, min(256, args.cache_distinct // 4),
                            [100_000, args.cache_distinct // 2])
    _say(f"\nCache hit rates (LRU, {args.cache_distinct} distinct captions, 3 shuffled epochs): "
         + "; ".join(f"cache size {size:,}: **{rate:.1%}**" for size, rate in rates.items())
         + ". With a cache that holds the data set, epoch e > 1 is all hits (rate (E-1)/E over E epochs); "
         "a smaller LRU cache under shuffling misses most of the time, so for data sets larger than "
         "--xsample-cache-size use a precomputed table.")
    online_expected = share(c) * (1 - rates[100_000]) + share(w) * rates[100_000]
    goals = [f"table share {share(tb):.2%} vs goal < {GOAL_TABLE_SHARE:.0%}: "
             f"{'met' if share(tb) < GOAL_TABLE_SHARE else 'MISSED'}"]
    if device.type == "cuda":
        goals.append(f"online share (cold) {share(c):.1%} vs goal < {GOAL_ONLINE_SHARE_GPU:.0%} on GPU: "
                     f"{'met' if share(c) < GOAL_ONLINE_SHARE_GPU else 'MISSED'}")
    _say("\nGoals: " + "; ".join(goals) + f". Online share averaged over 3 epochs with the default cache: "
         f"{online_expected:.1%}.\n")
    results["targets"] = dict(model=model_name, batch=batch, minilm_captions_per_s=rate,
                              minilm_captions_per_s_all_threads=rate_all, step_s=step_s,
                              clip_step_s=clip_s, online_cold_s=c, online_warm_s=w, table_s=tb,
                              share_online_cold=share(c), share_online_warm=share(w), share_table=share(tb),
                              cache_hit_rates={str(k): v for k, v in rates.items()})
    del model, opt


# --- section: e2e -------------------------------------------------------------------------------

STEP_RE = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/.*?Data \(t\): ([0-9.]+) Batch \(t\): ([0-9.]+)")


def parse_steps(log_text):
    """[(epoch, samples so far, data time, batch time)] of every logged step in an OpenCLIP out.log."""
    return [(int(e), int(s), float(d), float(b)) for e, s, d, b in STEP_RE.findall(log_text)]


def _steady(steps):
    """Batch times without each epoch's first step (it waits for the data loader to start)."""
    out, seen = [], set()
    for epoch, _, _, batch_t in steps:
        if epoch in seen:
            out.append((epoch, batch_t))
        seen.add(epoch)
    return out


def _instrumented_train(stats_path, argv):
    """The trainer with timers around caption-target building (``_train`` subcommand of this module)."""
    import atexit

    from . import captions

    stats = {"target_s": [], "hits": 0, "misses": 0}
    cuda = torch.cuda.is_available()

    def wrap(cls):
        stock = cls.__call__

        def timed(self, tokens):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = stock(self, tokens)
            if cuda:
                torch.cuda.synchronize()
            stats["target_s"].append(time.perf_counter() - start)
            stats["hits"], stats["misses"] = getattr(self, "hits", 0), getattr(self, "misses", 0)
            return out

        cls.__call__ = timed

    wrap(captions.OnlineCaptionEmbeddings)
    wrap(captions.TableCaptionEmbeddings)
    atexit.register(lambda: Path(stats_path).write_text(json.dumps(stats)))
    from .train import main as train_main

    return train_main(argv)


def bench_e2e(args, device, results, work):
    import open_clip

    from . import bench_data, model_configs
    from .encoders import SentenceEncoder
    from .precompute import build_table, iter_captions

    model_configs.register()
    work = Path(work) / "e2e"
    work.mkdir(parents=True, exist_ok=True)
    n = args.e2e_batch * args.e2e_steps
    precision = "amp_bf16" if device.type == "cuda" else "fp32"
    _say(f"## End to end: OpenCLIP's trainer, {args.e2e_model}, batch {args.e2e_batch}, {args.e2e_steps} steps "
         f"x {args.e2e_epochs} epochs, {precision}, {device.type}, --workers {args.e2e_workers} ({_load()})\n")
    data = bench_data.write_csv(work / "data", n=n, px=64)
    tokenizer = open_clip.get_tokenizer(args.e2e_model)
    logging.disable(logging.INFO)
    try:
        build_table(work / "table", iter_captions(str(data)), tokenizer, SentenceEncoder(device=str(device)),
                    args.e2e_model)
    finally:
        logging.disable(logging.NOTSET)
    base = ["--train-data", str(data), "--dataset-type", "csv", "--model", args.e2e_model,
            "--batch-size", str(args.e2e_batch), "--epochs", str(args.e2e_epochs), "--workers",
            str(args.e2e_workers), "--device", device.type, "--precision", precision, "--lr", "1e-4",
            "--warmup", "2", "--wd", "0.1", "--log-every-n-steps", "1", "--seed", "0",
            "--save-frequency", "0", "--logs", str(work / "logs")]
    runs = [("stock (--loss clip)", []),
            ("--loss xsample, online encoder", ["--loss", "xsample"]),
            ("--loss xsample, precomputed table", ["--loss", "xsample", "--xsample-embeddings", str(work / "table")])]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    steps = {label: [] for label, _ in runs}
    target = {label: {"target_s": [], "hits": 0, "misses": 0} for label, _ in runs}
    for rnd in range(args.e2e_rounds):
        order = runs if rnd % 2 == 0 else runs[::-1]
        for label, extra in order:
            name = f"r{rnd}_run{[lb for lb, _ in runs].index(label)}"
            stats_path = work / f"{name}.json"
            cmd = [sys.executable, "-m", "xsample_openclip.bench", "_train", str(stats_path), *base, "--name", name,
                   *extra]
            proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=3600)
            if proc.returncode != 0:
                raise RuntimeError(f"trainer run failed ({label}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
            steps[label] += parse_steps((work / "logs" / name / "out.log").read_text())
            if stats_path.is_file():
                st = json.loads(stats_path.read_text())
                target[label]["target_s"] += st["target_s"]
                target[label]["hits"] += st["hits"]
                target[label]["misses"] += st["misses"]
    ref_first = _median([b for e, b in _steady(steps[runs[0][0]]) if e == 0])
    ref_later = _median([b for e, b in _steady(steps[runs[0][0]]) if e > 0])
    rows, records = [], []
    for label, _ in runs:
        st = _steady(steps[label])
        first, later = _median([b for e, b in st if e == 0]), _median([b for e, b in st if e > 0])
        all_steps = sum(b for *_, b in steps[label])
        tg = target[label]
        share = sum(tg["target_s"]) / all_steps if tg["target_s"] and all_steps else 0.0
        hits = tg["hits"] + tg["misses"]
        rows.append([label, f"{first:.3f}", f"**{first / ref_first:.2f}**", f"{later:.3f}",
                     f"**{later / ref_later:.2f}**", f"{share:.1%}" if tg["target_s"] else "-",
                     f"{tg['hits'] / hits:.0%}" if hits else "-"])
        records.append(dict(run=label, epoch1_step_s=first, later_step_s=later, epoch1_ratio=first / ref_first,
                            later_ratio=later / ref_later, target_share=share, steps=len(steps[label]),
                            cache_hits=tg["hits"], cache_misses=tg["misses"]))
    _say(table(["run", "step s, epoch 1 (median)", "ratio vs stock", "step s, later epochs", "ratio vs stock",
                "target building, share of all steps", "cache hit rate"], rows))
    _say(f"\nBatch (t) from out.log, each epoch's first step left out (data loader start-up); "
         f"{args.e2e_rounds} round(s) per run, order alternated. ({_load()})\n")
    results["e2e"] = records


# --- section: precompute ------------------------------------------------------------------------

def bench_precompute(args, device, results, work):
    import tracemalloc

    import open_clip

    from . import bench_data, model_configs
    from .encoders import SentenceEncoder
    from .precompute import CaptionScan, build_table, check_table, iter_captions, unique_captions

    model_configs.register()
    k = args.precompute_captions
    work = Path(work) / "precompute"
    _say(f"## precompute: {k:,} distinct generated captions in 4 webdataset shards, {device.type}, "
         f"{args.target_model} tokenizer ({_load()})\n")
    caps = bench_data.text_captions(k, seed=3)
    pattern = bench_data.write_text_shards(work / "shards", caps, shards=4)
    tokenizer = open_clip.get_tokenizer(args.target_model)
    stats = {}
    logging.disable(logging.INFO)
    try:
        table_obj = build_table(work / "table", iter_captions(pattern), tokenizer,
                                SentenceEncoder(device=str(device)), args.target_model, stats=stats)
    finally:
        logging.disable(logging.NOTSET)
    # memory of the scan: the bounded spill-to-disk scan vs keeping every caption's text in a dict
    probe = caps[:min(k, 20_000)]
    tracemalloc.start()
    CaptionScan.run(iter(probe), tokenizer, work / "probe_scan").remove()
    scan_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    found, _ = unique_captions(iter(probe), tokenizer)
    dict_bytes = tracemalloc.get_traced_memory()[0]
    del found
    tracemalloc.stop()
    known = set(caps)
    extra = [c for c in bench_data.text_captions(k + 500, seed=4) if c not in known][:100]
    report = check_table(table_obj, iter(caps + extra + extra), tokenizer, details=True)
    scan_rate = stats["captions"] / stats["scan_s"]
    embed_rate = stats["embedded"] / stats["embed_s"]
    per_caption = stats["bytes"] / stats["distinct"]
    rows = [
        ["scan (read shards, tokenize, key, decode, spill)", f"{scan_rate:,.0f} captions/s",
         f"{1e6 / scan_rate / 60:.1f} min"],
        ["embed (MiniLM, batches of 1024, memory-mapped writes)", f"{embed_rate:,.0f} captions/s",
         f"{1e6 / embed_rate / 60:.1f} min"],
        ["table on disk (float16 + 8-byte keys)", f"{per_caption:.0f} bytes/caption",
         f"{per_caption * 1e6 / MIB:,.0f} MiB"],
    ]
    _say(table(["stage", "measured", "extrapolated to 1M distinct captions"], rows))
    _say(f"\n- Scan memory (tracemalloc, {len(probe):,} captions): spill-to-disk scan peak "
         f"{scan_peak / MIB:.1f} MiB, i.e. bounded by the 4096-caption chunk and ~24 B per caption for the final "
         f"key sort; keeping every text in a dict (the former approach) holds "
         f"{dict_bytes / len(probe):.0f} B per distinct caption ({dict_bytes / len(probe) * 1e7 / 2**30:.1f} GiB "
         f"for 10M).")
    _say(f"- `--check` on the data plus 100 captions not in the table (each twice): {json.dumps(report)}")
    _say("- Interrupted builds resume from the last saved batch (tests/test_captions.py "
         "test_interrupted_precompute_resumes). `--workers N` tokenizes in N processes during the scan.\n")
    results["precompute"] = dict(stats, scan_rate=scan_rate, embed_rate=embed_rate, bytes_per_caption=per_caption,
                                 scan_peak_bytes=scan_peak, dict_bytes_per_caption=dict_bytes / len(probe),
                                 check=report)


# --- main ---------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m xsample_openclip.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--quick", action="store_true", help="tiny sizes everywhere (a smoke run)")
    p.add_argument("--sizes", type=int, nargs="+", help="local batch sizes (CPU 256 1024 4096; GPU adds 16384)")
    p.add_argument("--widths", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--bf16-max-size", type=int, default=None,
                   help="skip bf16 above this local batch (CPU default 1024: no native bf16 GEMM on most CPUs)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per case (at least 2)")
    p.add_argument("--case-budget", type=float, default=None,
                   help="seconds of timing per case; fewer repeats (>= 2) where one pair takes longer "
                        "(CPU default 15, GPU unlimited)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch and OMP_NUM_THREADS)")
    p.add_argument("--scale-local", type=int, default=None)
    p.add_argument("--scale-width", type=int, default=512)
    p.add_argument("--scale-worlds", type=int, nargs="+", default=None)
    p.add_argument("--scale-repeats", type=int, default=3)
    p.add_argument("--target-model", default=None, help="CPU: xs-tiny-vit-64, GPU: ViT-B-32")
    p.add_argument("--target-batch", type=int, default=None)
    p.add_argument("--target-batches", type=int, default=None, help="batches timed per target path")
    p.add_argument("--target-steps", type=int, default=None)
    p.add_argument("--minilm-captions", type=int, default=None)
    p.add_argument("--cache-distinct", type=int, default=None)
    p.add_argument("--e2e-model", default=None)
    p.add_argument("--e2e-batch", type=int, default=None)
    p.add_argument("--e2e-steps", type=int, default=None, help="steps per epoch")
    p.add_argument("--e2e-epochs", type=int, default=2)
    p.add_argument("--e2e-rounds", type=int, default=1)
    p.add_argument("--e2e-workers", type=int, default=None, help="data loader workers (CPU 1, GPU 8)")
    p.add_argument("--precompute-captions", type=int, default=None)
    p.add_argument("--json", default=None, help="also write every figure to this JSON file")
    p.add_argument("--workdir", default=None, help="where generated data goes (default: a temporary folder)")
    args = p.parse_args(argv)
    gpu = args.device.startswith("cuda")
    defaults = dict(
        sizes=[256, 1024, 4096, 16384] if gpu else [256, 1024, 4096],
        bf16_max_size=0 if gpu else 1024, repeats=20 if gpu else 5, case_budget=0 if gpu else 15.0,
        scale_local=1024 if gpu else 256, scale_worlds=[1, 8, 64, 128] if gpu else [1, 8, 64, 256],
        target_model="ViT-B-32" if gpu else "xs-tiny-vit-64", target_batch=256 if gpu else 64,
        target_batches=8 if gpu else 6, target_steps=10 if gpu else 5,
        minilm_captions=16384 if gpu else 1024, cache_distinct=4096,
        e2e_model="ViT-B-32" if gpu else "xs-tiny-vit-64", e2e_batch=256 if gpu else 64,
        e2e_steps=8, e2e_workers=8 if gpu else 1, precompute_captions=50_000 if gpu else 2_000,
    )
    if args.quick:
        defaults.update(sizes=[128, 256], widths=[256], repeats=2, scale_local=32, scale_worlds=[1, 4, 16],
                        target_model="xs-tiny-vit-32", target_batch=16, target_batches=3, target_steps=2,
                        minilm_captions=64, cache_distinct=512, e2e_model="xs-tiny-vit-32", e2e_batch=16,
                        e2e_steps=3, precompute_captions=300)
        if args.widths == [512, 1024]:
            args.widths = [256]
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["_train"]:
        return _instrumented_train(argv[1], argv[2:])
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from . import precompute

    precompute.PROGRESS_BARS = False
    root_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # e.g. "No pretrained weights loaded" for random models
    try:
        return _run(args)
    finally:
        logging.getLogger().setLevel(root_level)
        precompute.PROGRESS_BARS = True


def _run(args):
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
               "cores": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
               "load_start": _load(), "args": {k: v for k, v in vars(args).items()}}
    _say(f"# xsample_openclip.bench — {results['date']}")
    _say(f"{results['device']}, {results['cores']} cores, torch {torch.__version__}, "
         f"{args.threads} CPU thread(s), {results['load_start']}\n")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xsample_bench_") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for section in SECTIONS:
            if section not in args.sections:
                continue
            t0 = time.perf_counter()
            if section == "loss":
                bench_loss(args, device, results)
            elif section == "scale":
                bench_scale(args, device, results)
            elif section == "targets":
                bench_targets(args, device, results, work)
            elif section == "e2e":
                bench_e2e(args, device, results, work)
            elif section == "precompute":
                bench_precompute(args, device, results, work)
            results.setdefault("section_s", {})[section] = time.perf_counter() - t0
    results["total_s"] = time.perf_counter() - started
    results["load_end"] = _load()
    _say(f"Total {results['total_s']:.0f} s; {results['load_end']} at the end.")
    if device.type == "cpu":
        _say("GPU figures (bf16 up to local batch 16384, ViT-B-32) are still to be measured: "
             "run `python -m xsample_openclip.bench --device cuda` on a GPU machine.")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
