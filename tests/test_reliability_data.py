"""Bad samples and data faults: odd captions train and are counted in the log; corrupt webdataset shards
are skipped the way OpenCLIP's handlers skip them; a caption-embedding table that does not fit the run
is refused at start-up with counts, before a log folder exists."""
import io
import json
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip import get_tokenizer
from open_clip_train import distributed, params

import tiny_data
from xsample_openclip.data import writers
from fault_runner import MODEL, csv_args, run_main, train_argv
from xsample_openclip.targets.decode import TokenDecoder
from xsample_openclip.targets.embedders import OnlineCaptionEmbeddings
from xsample_openclip.precompute import build_table
from xsample_openclip.targets.sources import iter_captions, sample_captions
from xsample_openclip.targets.table import EmbeddingTable

LONG = "a photo of " + " ".join(["a very long and winding road"] * 40)  # ~240 words, far past 32 tokens


def write_odd_csv(root):
    """64 rows: 50 ordinary captions and every kind of odd one; one image path is not UTF-8 either."""
    root = Path(root)
    (root / "images").mkdir(parents=True)
    odd = ([b""] * 3                                  # empty cells: pandas NaN, OpenCLIP's "nan"
           + [b" ", b"   "]                           # whitespace only: nothing after tokenizing
           + [b"!!! ...", b"?!", "😀🎉🔥".encode(), "🐶 🐱".encode()]  # no letter or digit
           + [b"a caf\xe9 at the corner", b"\xff\xfe a broken caption"]  # not UTF-8
           + [LONG.encode(), (LONG + " again").encode(), (LONG + " and more").encode()])
    ordinary = [c.encode() for c, *_ in tiny_data.samples(64 - len(odd))]
    lines = [b"filepath\ttitle"]
    for i, (caption, (_, colour, shape, place)) in enumerate(zip(ordinary + odd, tiny_data.samples(64))):
        name = f"{i:05d}".encode() + (b"-\xff" if i == 0 else b"") + b".jpg"  # raw byte in one file name
        path = os.path.join(os.fsencode(root / "images"), name)
        img = tiny_data.render(colour, shape, place)
        with open(path, "wb") as f:
            img.save(f, format="JPEG")
        lines.append(path + b"\t" + caption)
    (root / "odd.csv").write_bytes(b"\n".join(lines) + b"\n")
    return root / "odd.csv"


def caption_line(run, epoch=0):
    log = (run / "out.log").read_text()
    return re.search(rf"X-Sample captions, epoch {epoch}: (.*)", log).group(1)


def counted(line, label):
    m = re.search(rf"(\d+) {re.escape(label)}", line)
    return int(m.group(1)) if m else 0


def losses(run):
    return [float(v) for v in re.findall(r"Xsample_loss: (\S+) \(", (run / "out.log").read_text())]


def finite_checkpoint(run, epochs=1):
    sd = torch.load(run / "checkpoints" / f"epoch_{epochs}.pt", weights_only=True)["state_dict"]
    return all(torch.isfinite(v).all() for v in sd.values())


def order_file_duplicates(path):
    batches = [json.loads(line)["keys"] for line in Path(path).read_text().splitlines()]
    return len(batches), sum(len(b) - len(set(b)) for b in batches)


def test_odd_captions_train_under_bf16_and_are_counted(tmp_path):
    data = write_odd_csv(tmp_path / "data")
    order = tmp_path / "order.jsonl"
    argv = train_argv(tmp_path / "logs", "odd", csv_args(data), "--precision", "amp_bf16", epochs=1, batch_size=8)
    assert run_main(argv, {"record_order": str(order)}) is None
    run = tmp_path / "logs" / "odd"
    log = (run / "out.log").read_text()
    assert "2 caption(s) had bytes that are not UTF-8, replaced by U+FFFD; 1 image path(s)" in log
    assert "3 empty caption cell(s); OpenCLIP reads each as the text 'nan'" in log

    line = caption_line(run)
    batches, duplicates = order_file_duplicates(order)
    assert line.startswith("64 captions in 8 batches; odd:") and batches == 8
    assert counted(line, "empty") == 2
    assert counted(line, "the text 'nan'") == 3
    assert counted(line, "punctuation/symbols/emoji only") == 4
    assert counted(line, "with undecodable bytes") == 2
    assert counted(line, "cut at the context length (32 tokens)") == 3
    assert counted(line, "repeating a caption earlier in the same batch") == duplicates
    assert all(np.isfinite(losses(run))) and len(losses(run)) == 8
    assert finite_checkpoint(run)


def test_a_whole_batch_of_identical_captions(tmp_path):
    rows = [("a red circle at the top left", "red", "circle", "top left")] * 16
    data = _csv(tmp_path, rows)
    assert run_main(train_argv(tmp_path / "logs", "same", csv_args(data), epochs=1, batch_size=8)) is None
    run = tmp_path / "logs" / "same"
    line = caption_line(run)
    assert counted(line, "batch(es) of identical captions (uniform targets)") == 2
    assert counted(line, "repeating a caption earlier in the same batch") == 14
    # uniform targets over 8 columns: the loss is at least log 8, and finite
    assert all(np.isfinite(v) and v >= np.log(8) - 1e-3 for v in losses(run))
    assert finite_checkpoint(run)


def test_batch_of_one(tmp_path):
    data = _csv(tmp_path, tiny_data.samples(16))
    assert run_main(train_argv(tmp_path / "logs", "one", csv_args(data), epochs=1, batch_size=1)) is None
    run = tmp_path / "logs" / "one"
    assert caption_line(run) == "16 captions in 16 batches; none odd"
    # one column: the target is certain and the loss is 0 (up to float32 rounding)
    assert len(losses(run)) == 16 and all(abs(v) < 1e-6 for v in losses(run))
    assert finite_checkpoint(run)


def _csv(tmp_path, rows):
    root = tmp_path / "data"
    samples = [(f"{i:05d}", writers.jpeg_bytes(tiny_data.render(colour, shape, place)), caption)
               for i, (caption, colour, shape, place) in enumerate(rows)]
    return writers.write_csv(root / "train.csv", samples, root / "images")


def test_caption_stats_count_each_step_once_under_gradient_accumulation():
    tokenizer = get_tokenizer(MODEL)

    class Encoder:
        name, dim = "stub", 3

        def encode(self, texts):
            return torch.nn.functional.normalize(torch.ones(len(texts), 3), dim=-1)

    emb = OnlineCaptionEmbeddings(TokenDecoder(tokenizer), Encoder())
    emb.stats.calls_per_batch = 3  # what the training loop sets for --accum-freq 3
    for batch in (["a dog", "", "a dog", "?!"], ["nan", "nan"], ["nan", "nan"]):
        for _ in range(3):  # the same concatenated batch reaches the loss 3 times per step
            emb(tokenizer(batch))
    counts = emb.stats.take()
    assert counts["samples"] == 8 and counts["batches"] == 3
    assert counts["empty"] == 1 and counts["no_words"] == 1 and counts["nan"] == 4
    assert counts["duplicates"] == 3 and counts["uniform_batches"] == 2
    assert emb.stats.take()["samples"] == 0  # reset per epoch


# ---------------------------------------------------------------------------------------------------
# Corrupt webdataset shards


def faulty_shards(root):
    """4 shards of 16: #1 truncated mid-member, #2 not a tar at all, #3 with a caption that is not UTF-8
    and an image that is not a JPEG."""
    pattern = tiny_data.write_shards(root, n=64, shards=4)
    raw = (root / "000001.tar").read_bytes()
    (root / "000001.tar").write_bytes(raw[: len(raw) // 2 + 100])
    (root / "000002.tar").write_bytes(np.random.default_rng(0).bytes(5000))
    with tarfile.open(root / "000003.tar") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(root / "000003.tar", "w") as tar:
        for member, data in members:
            if member.name == "00050.txt":
                data = b"a caf\xe9 \xff"
            elif member.name == "00051.jpg":
                data = b"not a jpeg"
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return pattern


@pytest.fixture(scope="module")
def bad_shards(tmp_path_factory):
    return faulty_shards(tmp_path_factory.mktemp("badwds"))


@pytest.mark.parametrize("resampled", [False, True])
def test_corrupt_shards_are_skipped_like_open_clip_does(tmp_path, bad_shards, resampled):
    data = ["--train-data", bad_shards, "--dataset-type", "webdataset", "--train-num-samples", "64"]
    extra = ["--dataset-resampled"] if resampled else []
    assert run_main(train_argv(tmp_path / "logs", "wds", data, *extra, epochs=1, batch_size=8)) is None
    run = tmp_path / "logs" / "wds"
    log = (run / "out.log").read_text()
    warnings = re.findall(r"WARNING \| Handling webdataset error \((\w+)", log)
    # OpenCLIP's own handler (log_and_continue) warns and skips. Read errors happen before the sample
    # shuffle; decode errors only for the samples drawn from its buffer, which --dataset-resampled
    # fills from an endless stream (webdataset seeds that shuffle from pid and time), so only the
    # unresampled pass, which draws every readable sample, meets all of them for sure.
    expected = {"ReadError"} if resampled else {"ReadError", "UnicodeDecodeError", "UnidentifiedImageError"}
    assert expected <= set(warnings), warnings
    assert caption_line(run).startswith("64 captions in 8 batches")  # the epoch is still full
    assert len(losses(run)) == 8 and all(np.isfinite(losses(run)))
    assert finite_checkpoint(run)


# ---------------------------------------------------------------------------------------------------
# Precomputed table that does not match the run


class StubEncoder:
    def __init__(self, name="stub", dim=4):
        self.name, self.dim = name, dim

    def encode(self, texts):
        g = torch.Generator().manual_seed(len(texts))
        return torch.nn.functional.normalize(torch.randn(len(texts), self.dim, generator=g), dim=-1)


@pytest.fixture(scope="module")
def tables(tmp_path_factory, csv_data):
    root = tmp_path_factory.mktemp("tables")
    tok = get_tokenizer(MODEL)
    captions = list(iter_captions(str(csv_data)))
    made = {
        "good": build_table(root / "good", iter(captions), tok, StubEncoder("all-MiniLM-L6-v2", 4), MODEL),
        "half": build_table(root / "half", iter(captions[:32]), tok, StubEncoder(), MODEL),
        "other_tokenizer": build_table(root / "other_tokenizer", iter(captions), get_tokenizer("ViT-B-32"),
                                       StubEncoder(), "ViT-B-32"),
        "stub": build_table(root / "stub", iter(captions), tok, StubEncoder(), MODEL),
    }
    return {k: str(v.path) for k, v in made.items()}


def start(argv):
    """What main does first: parse, then init_distributed_device (where the table checks run)."""
    args = params.parse_args(argv)
    distributed.init_distributed_device(args)
    return args


def parse(csv, *argv):
    return start(["--train-data", str(csv), "--dataset-type", "csv", "--model", MODEL, "--device", "cpu",
                  "--loss", "xsample", "--xsample-tau-s", "0.2", *argv])


def refused(capsys, csv, *argv):
    with pytest.raises(SystemExit) as exc:
        parse(csv, *argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_matching_table_is_accepted_and_the_check_is_logged(tables, csv_data):
    args = parse(csv_data, "--xsample-embeddings", tables["good"])
    assert args.loss_run.notes == [
        f"--xsample-embeddings {tables['good']} has all 64 training captions checked (64 distinct, from "
        "1 of 1 source(s); 64 captions read; --xsample-check-captions 10000)"]
    assert args.xsample_embeddings == tables["good"]


def test_table_missing_captions_is_refused_with_counts(tables, csv_data, capsys):
    err = refused(capsys, csv_data, "--xsample-embeddings", tables["half"])
    assert "is missing 32 of the 64 distinct captions among 64 training captions checked" in err
    assert "(32 captions, 32 read, model 'xs-tiny-vit-32')" in err and "--xsample-check-captions 0" in err
    parse(csv_data, "--xsample-embeddings", tables["half"], "--xsample-check-captions", "0")  # opt-out


def test_table_sample_size_bounds_the_scan(tables, csv_data, capsys):
    err = refused(capsys, csv_data, "--xsample-embeddings", tables["half"], "--xsample-check-captions", "40")
    match = re.search(r"is missing (\d+) of the 40 distinct captions among 40 training captions checked", err)
    assert match and 0 < int(match.group(1)) <= 32


def test_table_for_another_tokenizer_is_refused(tables, csv_data, capsys):
    err = refused(capsys, csv_data, "--xsample-embeddings", tables["other_tokenizer"])
    assert "built for model 'ViT-B-32' (SimpleTokenizer, context length 77)" in err
    assert "context length 32: none of its 64 keys can match" in err


def test_table_from_another_encoder_is_refused_when_the_encoder_is_given(tables, csv_data, capsys):
    parse(csv_data, "--xsample-embeddings", tables["stub"])  # not given: the table's encoder is used
    err = refused(capsys, csv_data, "--xsample-embeddings", tables["stub"], "--xsample-encoder", "minilm")
    assert "--xsample-encoder minilm (all-MiniLM-L6-v2, width 384) is not the encoder" in err
    assert "(stub, width 4)" in err
    err = refused(capsys, csv_data, "--xsample-embeddings", tables["good"], "--xsample-encoder", "minilm")
    assert "(all-MiniLM-L6-v2, width 4)" in err  # same name, wrong width


def test_corrupt_or_inconsistent_table_is_refused(tables, csv_data, capsys, tmp_path):
    import shutil

    bad = tmp_path / "nan_rows"
    shutil.copytree(tables["good"], bad)
    emb = np.load(bad / "embeddings.npy")
    emb[::8] = np.nan
    np.save(bad / "embeddings.npy", emb)
    err = refused(capsys, csv_data, "--xsample-embeddings", str(bad))
    assert "8 of 64 checked rows are not finite unit vectors" in err
    with pytest.raises(ValueError, match="are not finite"):
        EmbeddingTable(bad).lookup(np.asarray(EmbeddingTable(bad).keys[:8]))

    wide = tmp_path / "wrong_width"
    shutil.copytree(tables["good"], wide)
    meta = json.loads((wide / "meta.json").read_text())
    (wide / "meta.json").write_text(json.dumps(dict(meta, dim=384)))
    err = refused(capsys, csv_data, "--xsample-embeddings", str(wide))
    assert "meta.json says width 384 but embeddings.npy rows have width 4" in err


def test_table_check_on_local_shards_survives_corrupt_ones(tmp_path, bad_shards, capsys):
    captions, info = sample_captions(bad_shards, 10_000, "webdataset")
    report = info["report"]
    assert info["sources_read"] == 4 and len(report.unreadable_sources) >= 2 and len(captions) > 16
    table = build_table(tmp_path / "t", iter(captions[:-3]), get_tokenizer(MODEL), StubEncoder(), MODEL)
    with pytest.raises(SystemExit):
        start(["--train-data", bad_shards, "--dataset-type", "webdataset", "--model", MODEL, "--device", "cpu",
               "--loss", "xsample", "--xsample-tau-s", "0.2", "--xsample-embeddings", str(table.path)])
    err = capsys.readouterr().err
    assert re.search(r"is missing 3 of the \d+ distinct captions among \d+ training captions checked "
                     r"\(\d+ distinct, from 4 of 4 source\(s\); \d+ captions read; 1 webdataset .txt member\(s\) skipped: "
                     r"not valid UTF-8 .*; 2 source\(s\) unreadable", err), err


def test_refused_table_stops_the_real_main_before_the_log_folder(tables, csv_data, tmp_path):
    with pytest.raises(SystemExit) as exc:
        run_main(train_argv(tmp_path / "logs", "t", csv_args(csv_data), "--xsample-embeddings", tables["half"]))
    assert exc.value.code == 2 and not (tmp_path / "logs").exists()
