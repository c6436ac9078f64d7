"""The paper's comparison in small (``--family paper``): SimCLR through the xclr code path (instance graph)
against NT-Xent written here, SupCon as X-CLR over class captions at tau_s 1e-4 against SupCon's uniform
same-class targets on the real class captions (MiniLM), the run specs, the class-caption and fraction CSVs,
the task-aware summary, and the data-size plot."""
import csv
import json
import math

import pytest
import torch

from xsample_openclip.data.train_variants import (class_caption_csv, emoji_subgroups, fraction_csv,
                                                  fraction_indices, read_train_csv)
from xsample_openclip.data.writers import write_csv
from xsample_openclip.demo import datasize, paper
from xsample_openclip.demo.runs import TrainData, TrainSettings, command
from xsample_openclip.losses.xclr import XClrLoss, xclr_loss


def interleave(z1, z2):
    return torch.stack([z1, z2], dim=1).flatten(0, 1)


def nt_xent(z1, z2, temperature):
    """SimCLR's NT-Xent (Chen et al. 2020) on unit views z1, z2 (N x D): views 0..N-1 then N..2N-1, each
    anchor's positive its other view, denominator every other view; mean over the 2N anchors."""
    z = torch.cat([z1, z2])
    n = z1.shape[0]
    sim = z @ z.T / temperature
    total = 0.0
    for a in range(2 * n):
        p = (a + n) % (2 * n)
        others = [c for c in range(2 * n) if c != a]
        total = total - (sim[a, p] - torch.logsumexp(sim[a, others], dim=0))
    return total / (2 * n)


def unit(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def test_instance_graph_is_nt_xent_value_and_gradient_with_repeated_captions():
    n, T = 6, 0.1
    z1, z2 = unit(n, 8, seed=0).requires_grad_(), unit(n, 8, seed=1).requires_grad_()
    # captions 0, 1 and 2 identical, 3 and 4 identical: the caption graph would pair them, the instance graph not
    base = unit(3, 5, seed=2)
    captions = base[[0, 0, 0, 1, 1, 2]]
    loss = XClrLoss(tau_s=1e-4, temperature=T, graph="instance")
    value = loss(interleave(z1, z2), None, None, caption_embeddings=captions)
    grads = torch.autograd.grad(value, (z1, z2))
    ref = nt_xent(z1, z2, T)
    ref_grads = torch.autograd.grad(ref, (z1, z2))
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(ref.item(), rel=1e-12)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, rtol=1e-10, atol=1e-12)
    graph = XClrLoss(tau_s=1e-4, temperature=T)(interleave(z1, z2), None, None, caption_embeddings=captions)
    assert abs(graph.item() - ref.item()) > 1e-2  # the caption graph on these captions is another loss


def test_instance_graph_rows_of_one_rank_are_the_global_rows():
    """--local-loss: rank r's anchors against the global columns give the global loss's rows."""
    z = unit(8, 4, seed=3)
    placeholder = torch.zeros(4, 1)
    per_rank = [xclr_loss(z[4 * r: 4 * r + 4], z, placeholder[:2], placeholder, 0.1, 10.0, 2 * r, "instance")
                for r in range(2)]
    full = xclr_loss(z, z, placeholder, placeholder, 0.1, 10.0, 0, "instance")
    assert (per_rank[0] + per_rank[1]).item() / 2 == pytest.approx(full.item(), rel=1e-12)


def test_instance_graph_counts_samples_without_embedding():
    z = interleave(unit(3, 4, seed=4), unit(3, 4, seed=5)).float()
    value = XClrLoss(temperature=0.1, graph="instance")(z, None, None, batch_tokens=torch.zeros(3, 7, dtype=torch.long))
    assert torch.isfinite(value)
    with pytest.raises(ValueError, match="graph must be one of"):
        XClrLoss(graph="class")


def all_class_captions():
    """Every class caption the class-caption CSV can hold: the 10 concepts and every Unicode subgroup."""
    from xsample_openclip.data.concepts import CONCEPTS
    from xsample_openclip.data.train_variants import class_caption

    names = {c.name for c in CONCEPTS} | {s.replace("-", " ") for s in emoji_subgroups().values()}
    return [class_caption(name) for name in sorted(names)]


def test_supcon_tau_s_gives_supcon_uniform_same_class_targets_on_the_class_captions():
    from xsample_openclip.losses.graph import softmax_targets, unit_captions
    from xsample_openclip.targets.encoders import SentenceEncoder

    captions = all_class_captions()
    assert len(captions) > 50
    embedded = unit_captions(SentenceEncoder("minilm").encode(captions))  # float32, as in training
    sim = embedded @ embedded.T
    off = sim - 2 * torch.eye(len(captions))
    print(f"{len(captions)} class captions; largest cosine between two classes: {off.max().item():.4f}")
    # a batch with every class twice (two samples), each with two views: 4 rows per class
    labels = torch.arange(len(captions)).repeat_interleave(2)
    rows = embedded[labels].repeat_interleave(2, dim=0)
    view_labels = labels.repeat_interleave(2)
    target = softmax_targets(rows, rows, paper.SUPCON_TAU_S, 0, mask_self=True)
    same = (view_labels[:, None] == view_labels[None, :]) & ~torch.eye(len(view_labels), dtype=torch.bool)
    supcon = same.double() / same.sum(dim=1, keepdim=True)  # SupCon's L_out: uniform over the other positives
    assert (target.double() - supcon).abs().max().item() < 1e-6


def test_paper_run_specs_share_images_epochs_batch_and_differ_only_in_loss_flags(tmp_path):
    captions = TrainData(str(tmp_path / "captions.csv"), 100)
    classes = TrainData(str(tmp_path / "class.csv"), 100)
    specs = paper.run_specs([0, 1], paper.select(), {"captions": captions, "class": classes})
    assert [s.name for s in specs[:7]] == [f"{n}-s0" for n in
                                          ("clip", "simclr", "xclr", "xclr-class", "supcon", "xsample", "xsample-2v")]
    assert len(specs) == 14 and {s.seed for s in specs[7:]} == {1}
    settings = TrainSettings(model="xs-tiny-vit-32", epochs=3, batch_size=32)
    flags = {s.name: s.loss_args for s in specs}
    for name, f in flags.items():
        two = name.startswith(("simclr", "xclr", "supcon", "xsample-2v"))
        assert (("--xsample-views", "2") in zip(f, f[1:])) == two, name
        if name.startswith(("simclr", "xclr", "supcon")):
            assert f[:2] == ("--loss", "xclr") and "--lock-text" in f and "--lock-text-freeze-layer-norm" in f
            assert f[f.index("--xsample-xclr-temperature") + 1] == "0.2"
    assert f_value(flags["simclr-s0"], "--xsample-xclr-graph") == "instance"
    assert f_value(flags["supcon-s0"], "--xsample-tau-s") == "0.0001"
    assert f_value(flags["xclr-class-s0"], "--xsample-tau-s") == "0.1"
    assert "--xsample-tau-s" not in flags["xclr-s0"]  # the package default (auto)
    assert f_value(flags["xsample-2v-s0"], "--xsample-image-weight") == "1.0"
    # the paper's soft target for both image-text X-Sample runs, not the package's hard-target mix
    assert f_value(flags["xsample-s0"], "--xsample-clip-weight") == "0"
    assert f_value(flags["xsample-2v-s0"], "--xsample-clip-weight") == "0"
    assert flags["clip-s0"] == ("--loss", "clip")
    assert {s.name for s in specs if s.data is classes} == {f"{n}-s{k}" for n in ("xclr-class", "supcon") for k in (0, 1)}
    # the trainer's command lines: identical but for the loss flags, the name, the seed and the captions CSV
    shared = set()
    for spec in specs:
        cmd = command(spec, captions, settings, tmp_path / "logs")
        cut = cmd[:cmd.index("--name")] + cmd[cmd.index("--name") + 2 + len(spec.loss_args):]
        cut[cut.index("--seed") + 1] = "SEED"
        cut[cut.index("--train-data") + 1] = "CSV"
        shared.add(tuple(cut))
        assert ("--epochs", "3") in zip(cmd, cmd[1:]) and ("--batch-size", "32") in zip(cmd, cmd[1:])
    assert len(shared) == 1


def f_value(flags, name):
    return flags[flags.index(name) + 1]


def test_paper_options_and_loss_selection():
    custom = paper.PaperOptions(temperature=0.2, tau_s_captions="0.05", tau_s_class=0.3, image_weight=0.5,
                                view_flags=("--xsample-view-blur", "0.5"))
    losses = {loss.name: loss.flags for loss in paper.select(("xclr", "xsample-2v", "xclr-class"), custom)}
    assert list(losses) == ["clip", "xclr", "xclr-class", "xsample-2v"]
    assert f_value(losses["xclr"], "--xsample-tau-s") == "0.05" and f_value(losses["xclr"], "--xsample-xclr-temperature") == "0.2"
    assert f_value(losses["xclr-class"], "--xsample-tau-s") == "0.3"
    assert f_value(losses["xsample-2v"], "--xsample-image-weight") == "0.5"
    assert all(f[-2:] == ("--xsample-view-blur", "0.5") for n, f in losses.items() if n != "clip")
    with pytest.raises(ValueError, match="unknown paper-family losses"):
        paper.select(("simclr", "byol"))


def test_cli_refuses_paper_flags_elsewhere_and_other_flags_with_paper(capsys):
    from xsample_openclip.demo.cli import parse_args

    for argv, text in ((["--data-fraction", "0.5"], "belong to --family paper"),
                       (["--family", "paper", "--dataset", "shapes"], "drop --dataset shapes"),
                       (["--family", "paper", "--data-fraction", "0"], "--data-fraction must be in (0, 1]"),
                       (["--family", "paper", "--paper-losses", "byol"], "unknown ['byol']")):
        with pytest.raises(SystemExit):
            parse_args(["--out", "x", *argv])
        assert text in capsys.readouterr().err


def emoji_rows(tmp_path, n=12):
    """A train.csv in the emoji data's layout (filepath, title, emoji, concept, background), written by
    the one CSV writer, with emoji from concepts and two outside them."""
    concepts = ["animal", "food", "", "tool", ""]
    keys = ["1F436", "1F336-FE0F", "1F6A3-200D-2642-FE0F", "1FA93", "1F4BB"]
    samples = [(f"{i:06d}", b"jpeg%d" % i, f"caption {i}",
                {"emoji": keys[i % 5], "concept": concepts[i % 5], "background": "plain"}) for i in range(n)]
    return write_csv(tmp_path / "train.csv", samples, tmp_path / "images", extra_columns=["emoji", "concept", "background"])


def test_class_caption_csv_keeps_images_and_order_and_captions_the_class(tmp_path):
    from xsample_openclip.data.catalog import load_catalog

    train = emoji_rows(tmp_path)
    out = class_caption_csv(train, tmp_path / "variants" / "class.csv")
    before, after = read_train_csv(train), read_train_csv(out)
    assert [r["filepath"] for r in after] == [r["filepath"] for r in before]
    assert [{k: v for k, v in r.items() if k != "title"} for r in after] == \
        [{k: v for k, v in r.items() if k != "title"} for r in before]
    subgroup = {e.key: e.subgroup for e in load_catalog(include_skin_tones=True)}
    for row in after:
        name = row["concept"] or subgroup[row["emoji"]].replace("-", " ")
        assert row["title"] == f"a photo of {'an' if name[0] in 'aeiou' else 'a'} {name}"
    assert after[0]["title"] == "a photo of an animal" and after[3]["title"] == "a photo of a tool"
    assert all(open(r["filepath"], "rb").read().startswith(b"jpeg") for r in after)  # images untouched


def test_data_fraction_sizes_seeded_and_nested(tmp_path):
    n = 1000
    subsets = {f: fraction_indices(n, f, seed=0) for f in (0.25, 0.5, 1.0)}
    assert [len(subsets[f]) for f in (0.25, 0.5, 1.0)] == [250, 500, 1000]
    assert set(subsets[0.25]) < set(subsets[0.5]) < set(subsets[1.0]) == set(range(n))
    assert subsets[0.25] == sorted(subsets[0.25]) == fraction_indices(n, 0.25, seed=0)
    assert fraction_indices(n, 0.25, seed=1) != subsets[0.25]
    assert subsets[0.25] != list(range(250))  # a shuffle, not the first rows
    with pytest.raises(ValueError, match="data fraction"):
        fraction_indices(n, 1.5, seed=0)
    train = emoji_rows(tmp_path, n=40)
    half = fraction_csv(train, tmp_path / "half.csv", 0.5, seed=0)
    rows, all_rows = read_train_csv(half), read_train_csv(train)
    assert rows == [all_rows[i] for i in fraction_indices(40, 0.5, seed=0)]
    data = paper.training_data(train, tmp_path / "f0.5", 0.5, 0)
    assert data["captions"].num_samples == data["class"].num_samples == 20
    assert [r["filepath"] for r in read_train_csv(data["class"].csv)] == [r["filepath"] for r in rows]


def test_summary_tells_probe_and_zero_shot_bg_gap_apart_and_drops_zero_shot_of_image_only_runs(tmp_path):
    from xsample_openclip.demo.summary import summary_rows, collect

    results = tmp_path / "results.csv"
    lines = []
    for run, base in (("clip-s0", 0.50), ("simclr-s0", 0.30)):
        lines += [(run, "emoji_bg_test", "zeroshot_classification", "bg_gap", base),
                  (run, "emoji_bg_test", "linear_probe", "bg_gap", base / 10),
                  (run, "emoji_cls_test", "linear_probe", "lp_acc1", base + 0.1),
                  (run, "emoji_cls_test", "zeroshot_classification", "acc1", base + 0.2)]
    with open(results, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "dataset", "task", "metric", "value"])
        w.writerows(lines)
    reported = paper.reported_results(results, tmp_path / "reported.csv", paper.select(("simclr",)))
    rows = {r["label"]: r["values"] for r in summary_rows(collect(reported), ["clip", "simclr"],
                                                           paper.headline(), "test", paper.PRIMARY)}
    assert rows["probe BG-Gap = mixed_same - mixed_rand"] == {"clip": {0: pytest.approx(5.0)},
                                                             "simclr": {0: pytest.approx(3.0)}}
    assert rows["zero-shot BG-Gap (text-trained runs)"] == {"clip": {0: pytest.approx(50.0)}, "simclr": {}}
    assert rows["linear probe top-1, 10 concepts"]["simclr"] == {0: pytest.approx(40.0)}
    assert rows["zero-shot top-1, 10 concepts (text-trained runs)"]["simclr"] == {}


def per_seed_file(path, values):
    """A per-seed CSV as the demo writes it: values {loss: [per seed]}."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "loss", "seed", datasize.COLUMN, "other"])
        for loss, per_seed in values.items():
            for seed, v in enumerate(per_seed):
                w.writerow([f"{loss}-s{seed}", loss, seed, repr(v), "1.0"])
    return path


def test_datasize_plot_and_table_from_per_seed_files(tmp_path, capsys):
    files = {0.25: {"clip": [20.0, 22.0], "xclr": [25.0, 27.0]},
             0.5: {"clip": [30.0, 34.0], "xclr": [33.0, 35.0]},
             1.0: {"clip": [40.0, 41.0, 42.0], "xclr": [44.0, 45.0, 49.0], "simclr": [1.0, 2.0, 3.0]}}
    out = tmp_path / "runs"
    out.mkdir()
    sources = []
    for fraction, values in files.items():
        name = f"summary-test{paper.fraction_suffix(fraction)}-per-seed.csv"
        per_seed_file(out / name, values)
        if fraction == 0.25:  # one given as F=CSV, the others found through the study records
            sources.append(f"0.25={out / name}")
            continue
        (out / f"paper-test{paper.fraction_suffix(fraction)}.json").write_text(json.dumps(
            {"data_fraction": fraction, "train_images": int(3000 * fraction), "per_seed_csv": name}))
    sources.append(str(out))
    png = tmp_path / "size.png"
    assert datasize.main([*sources, "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000
    printed = capsys.readouterr().out
    for fraction, values in files.items():
        for loss in ("clip", "xclr"):
            v = values[loss]
            mean = sum(v) / len(v)
            std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1))
            assert f"{mean:.1f} ± {std:.1f} (n={len(v)})" in printed
    assert "| 0.5 (1500) |" in printed and "| 0.25 |" in printed
    # paired Δ xclr − clip per fraction; 95 % CI by hand: t(0.975, 1) = 12.706, t(0.975, 2) = 4.303
    assert "| 0.25 | +5.0 [+5.0, +5.0] (n=2) |" in printed  # Δ 5, 5: no spread
    assert "| 0.5 | +2.0 [-10.7, +14.7] (n=2) |" in printed  # Δ 3, 1: half 12.706 * sqrt(2) / sqrt(2)
    assert "| 1 | +5.0 [+0.7, +9.3] (n=3) |" in printed  # Δ 4, 4, 7: half 4.303 * sqrt(3) / sqrt(3)
    data = datasize.curves(datasize.points_of(sources, "test"), ["clip", "xclr"])
    assert [p[0] for p in data["clip"]] == [0.25, 0.5, 1.0]
    with pytest.raises(SystemExit):
        datasize.main([str(tmp_path / "empty")])
    assert "no paper-test*.json" in capsys.readouterr().err


def test_xclr_graph_flag_parses_and_refuses_unknown_graphs(capsys):
    from open_clip_train import params

    xclr = ["--train-data", "x.csv", "--model", "xs-tiny-vit-32", "--loss", "xclr", "--xsample-views", "2",
            "--lock-text", "--lock-text-freeze-layer-norm"]
    assert params.parse_args(xclr).xsample_xclr_graph == "captions"
    assert params.parse_args(xclr + ["--xsample-xclr-graph", "instance"]).xsample_xclr_graph == "instance"
    with pytest.raises(SystemExit):
        params.parse_args(xclr + ["--xsample-xclr-graph", "class"])
    assert "--xsample-xclr-graph" in capsys.readouterr().err


def test_paper_family_smoke_one_epoch_quarter_data(tmp_path):
    """``--family paper`` end to end: 1 epoch of the 32 px tiny model on a quarter of the real emoji data,
    one seed, all seven runs (~3 min on a busy 2-core CPU). Not a result: the wiring only."""
    import os
    import subprocess
    import sys

    out = tmp_path / "paper"
    cmd = [sys.executable, "-m", "xsample_openclip.demo", "--out", str(out), "--family", "paper", "--model",
           "xs-tiny-vit-32", "--epochs", "1", "--warmup", "5", "--data-fraction", "0.25", "--seeds", "0"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| linear probe top-1, 10 concepts |" in proc.stdout
    assert "zero-shot numbers of simclr, supcon, xclr, xclr-class left out of the summary" in proc.stderr + proc.stdout
    logs = out / "logs-f0.25"
    params = {n: (logs / f"{n}-s0" / "params.txt").read_text() for n in paper.PAPER_LOSS_NAMES}
    for name, text in params.items():
        assert "epochs: 1\n" in text and "batch_size: 64\n" in text, name
    assert "xsample_xclr_graph: instance" in params["simclr"] and "loss: xclr" in params["simclr"]
    assert "xsample_tau_s: 0.0001" in params["supcon"] and "class.csv" in params["supcon"]
    assert "class.csv" in params["xclr-class"] and "captions.csv" in params["xclr"]
    assert "xsample_image_weight: 1.0" in params["xsample-2v"] and "xsample_views: 2" in params["xsample-2v"]
    with open(out / "eval-test-f0.25" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    probe = {r["run"]: 100 * float(r["value"]) for r in rows
             if r["dataset"] == "emoji_cls_test" and r["metric"] == "lp_acc1"}
    with open(out / "summary-test-f0.25-per-seed.csv") as f:
        per_seed = {r["loss"]: r for r in csv.DictReader(f)}
    for name in paper.PAPER_LOSS_NAMES:
        assert float(per_seed[name]["linear probe top-1, 10 concepts"]) == pytest.approx(probe[f"{name}-s0"])
    zero_shot = "zero-shot top-1, 10 concepts (text-trained runs)"
    assert per_seed["simclr"][zero_shot] == "" and per_seed["xsample"][zero_shot] != ""
    record = json.loads((out / "paper-test-f0.25.json").read_text())
    assert record["train_images"] == len(read_train_csv(out / "train-f0.25-seed0" / "captions.csv"))
    assert datasize.main([str(out), "--losses", "clip", "xclr", "supcon"]) == 0
    assert (out / "datasize-test.png").stat().st_size > 10_000
