"""Section ``targets``: what caption targets cost next to a real training step.

- MiniLM throughput (captions/s) on the target device (and on every CPU thread when the device is the CPU);
- caption embeddings per batch from token ids: the online encoder with a cold cache (every caption
  new: the first epoch) and a warm one (every caption seen: later epochs), and the precomputed table,
  each as a share of a training step of a real model (forward, loss, backward, AdamW; X-Sample's step
  and ClipLoss's timed alternately);
- LRU cache hit rates of the online encoder over shuffled epochs, for a cache that holds the data and
  one that holds half of it.
Goals: the table's share of a step below 2%; on GPU, the online encoder's share with a cold cache
below 10%.
"""
import os

import torch

from .common import load_average, markdown_table, median, say
from .data import text_captions
from .measure import sync, timed, timed_value

GOAL_TABLE_SHARE, GOAL_ONLINE_SHARE_GPU = 0.02, 0.10


class _NullEncoder:
    """A free stand-in encoder (cache hit-rate simulation only)."""

    name, dim, device = "null", 8, torch.device("cpu")

    def encode(self, texts):
        return torch.zeros(len(texts), self.dim)


def run(args, device, results, work):
    import open_clip

    from .. import model_configs
    from ..targets.encoders import SentenceEncoder

    model_configs.register()
    amp = device.type == "cuda"
    say(f"## Caption targets: cost per training step ({args.target_model}, batch {args.target_batch}, "
        f"{device.type}{', amp bf16' if amp else ', fp32'}, {load_average()})\n")
    encoder = SentenceEncoder(device=str(device))
    tokenizer = open_clip.get_tokenizer(args.target_model)
    rates = _minilm_rates(args, device, encoder)
    paths = _target_paths(args, device, encoder, tokenizer, work)
    steps = _step_times(args, device, tokenizer, paths.pop("embeddings"))
    hit_rates = cache_hit_rates(tokenizer, args.cache_distinct, 3, min(256, args.cache_distinct // 4),
                                [100_000, args.cache_distinct // 2])
    record = dict(model=args.target_model, batch=args.target_batch, **rates, **paths, **steps,
                  cache_hit_rates={str(k): v for k, v in hit_rates.items()})
    for name in ("online_cold", "online_warm", "table"):
        record[f"share_{name}"] = record[f"{name}_s"] / (record["step_s"] + record[f"{name}_s"])
    _report(record, args, device, encoder, hit_rates)
    results["targets"] = record


def _minilm_rates(args, device, encoder):
    k = args.minilm_captions
    caps = text_captions(k + 64, seed=1)
    encoder.encode(caps[:64])
    rate = k / timed(lambda: encoder.encode(caps[64:]), device)
    rate_all = None
    cores = os.cpu_count() or 1
    if device.type == "cpu" and cores > args.threads:
        torch.set_num_threads(cores)
        try:
            rate_all = k / timed(lambda: encoder.encode(caps[64:]), device)
        finally:
            torch.set_num_threads(args.threads)
    return dict(minilm_captions=k, minilm_captions_per_s=rate, minilm_captions_per_s_all_threads=rate_all)


def _target_paths(args, device, encoder, tokenizer, work):
    """Median seconds per batch: online cold, online warm, table; and the embeddings for the step."""
    from ..targets.decode import TokenDecoder
    from ..targets.embedders import OnlineCaptionEmbeddings, TableCaptionEmbeddings
    from ..targets.keys import token_keys
    from ..targets.table import EmbeddingTable, table_meta, write_table

    batch, nb = args.target_batch, args.target_batches
    tokens = tokenizer(text_captions(batch * nb, seed=2))  # the loader's CPU tensor
    online = OnlineCaptionEmbeddings(TokenDecoder(tokenizer), encoder, cache_size=100_000)
    online(tokens[:batch])  # warm-up of the code path (these captions are not reused below)
    cold, warm, embs = [], [], []
    for j in range(1, nb):
        bt = tokens[j * batch:(j + 1) * batch]
        seconds, emb = timed_value(lambda: online(bt), device)
        cold.append(seconds)
        embs.append(emb.cpu())
        warm.append(timed(lambda: online(bt), device))
    meta = table_meta(tokenizer, encoder.name, args.target_model)
    write_table(work / "target_table", token_keys(tokens[batch:]), torch.cat(embs).numpy().astype("float16"), meta)
    lookup = TableCaptionEmbeddings(EmbeddingTable(work / "target_table"))
    table_t = [timed(lambda: lookup(tokens[j * batch:(j + 1) * batch]), device) for j in range(1, nb)]
    return dict(online_cold_s=median(cold), online_warm_s=median(warm), table_s=median(table_t),
                embeddings=(tokens[batch:2 * batch], embs[0]))


def _step_times(args, device, tokenizer, embeddings):
    """Median seconds of a training step (forward, loss, backward, AdamW) with each loss, alternating."""
    import open_clip
    from open_clip.loss import ClipLoss

    from ..losses.softmax import XSampleLoss

    amp = device.type == "cuda"
    model = open_clip.create_model(args.target_model, device=device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    size = model.visual.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    images = torch.randn(args.target_batch, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)
    tokens, captions = embeddings[0].to(device), embeddings[1].to(device)
    xs_fn, clip_fn = XSampleLoss(tau_s=0.1), ClipLoss()

    def step(with_captions):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            img_f, txt_f, scale = model(images, tokens)[:3]
            loss = xs_fn(img_f, txt_f, scale, caption_embeddings=captions) if with_captions \
                else clip_fn(img_f, txt_f, scale)
        loss.backward()
        opt.step()

    step(False), step(True)
    sync(device)
    times = {False: [], True: []}
    for r in range(args.target_steps):
        for with_captions in ((False, True) if r % 2 == 0 else (True, False)):
            times[with_captions].append(timed(lambda: step(with_captions), device))
    return dict(step_s=median(times[True]), clip_step_s=median(times[False]), steps_timed=args.target_steps)


def cache_hit_rates(tokenizer, distinct, epochs, batch, cache_sizes, seed=0):
    """Hit rate of ``OnlineCaptionEmbeddings`` over ``epochs`` shuffled passes of ``distinct`` captions."""
    from ..targets.decode import TokenDecoder
    from ..targets.embedders import OnlineCaptionEmbeddings

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


def _report(r, args, device, encoder, hit_rates):
    where = f"{args.threads} CPU thread(s)" if device.type == "cpu" else device.type
    say(f"- Packaged all-MiniLM-L6-v2 on {where}: **{r['minilm_captions_per_s']:,.0f} captions/s** "
        f"({r['minilm_captions']} distinct generated captions of ~10 words, batches of {encoder.batch_size})")
    if r["minilm_captions_per_s_all_threads"]:
        say(f"- The same on all CPU threads: **{r['minilm_captions_per_s_all_threads']:,.0f} captions/s**")
    say(f"- Training step without target building: X-Sample {r['step_s'] * 1e3:.0f} ms, ClipLoss "
        f"{r['clip_step_s'] * 1e3:.0f} ms (ratio {r['step_s'] / r['clip_step_s']:.2f}; forward, loss, backward, "
        f"AdamW; median of {args.target_steps})\n")
    rows = [
        ["online encoder, cache cold (every caption new: first epoch)", f"{r['online_cold_s'] * 1e3:.1f}",
         f"{r['share_online_cold']:.1%}"],
        ["online encoder, cache warm (every caption seen: later epochs)", f"{r['online_warm_s'] * 1e3:.2f}",
         f"{r['share_online_warm']:.2%}"],
        ["precomputed table (memory-mapped, float16)", f"{r['table_s'] * 1e3:.2f}", f"**{r['share_table']:.2%}**"],
    ]
    say(markdown_table(["target building", "ms per batch", "share of the step"], rows))
    say(f"\nCache hit rates (LRU, {args.cache_distinct} distinct captions, 3 shuffled epochs): "
        + "; ".join(f"cache size {size:,}: **{rate:.1%}**" for size, rate in hit_rates.items())
        + ". A cache that holds the data set makes epoch e > 1 all hits (rate (E-1)/E over E epochs); a smaller "
        "LRU cache under shuffling misses most of the time: for data sets larger than --xsample-cache-size "
        "use a precomputed table.")
    goals = [f"table share {r['share_table']:.2%} vs goal < {GOAL_TABLE_SHARE:.0%}: "
             f"{'met' if r['share_table'] < GOAL_TABLE_SHARE else 'MISSED'}"]
    if device.type == "cuda":
        goals.append(f"online share (cold) {r['share_online_cold']:.1%} vs goal < {GOAL_ONLINE_SHARE_GPU:.0%} on "
                     f"GPU: {'met' if r['share_online_cold'] < GOAL_ONLINE_SHARE_GPU else 'MISSED'}")
    say("\nGoals: " + "; ".join(goals) + f". ({load_average()})\n")
