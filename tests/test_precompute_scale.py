"""Precompute beyond one process: shard jobs + ``--merge`` and torchrun give the one-process table; the
merge refuses missing, unfinished and incompatible shards; interrupted shards and merges resume; webdataset
members are read, skipped and counted as OpenCLIP's loader reads them, in builds, merges and --check."""
import contextlib
import io
import json
import logging
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip import get_tokenizer

import tiny_data
from xsample_openclip import precompute
from xsample_openclip.precompute import PrecomputeError, build, merge_shards, parse_args, shard_dir
from xsample_openclip.targets.encoders import SentenceEncoder
from xsample_openclip.targets.sources import ReadReport, iter_captions
from xsample_openclip.targets.table import EmbeddingTable

MODEL = "xs-tiny-vit-32"
DISTINCT = [caption for caption, *_ in tiny_data.samples(44)]
#: 3 webdataset sources of 16 captions; shard 0 of 2 reads sources 0 and 2, shard 1 reads source 1,
#: which repeats 4 captions of source 0: 48 read, 44 distinct.
CAPTIONS = DISTINCT[:16] + DISTINCT[16:28] + DISTINCT[:4] + DISTINCT[28:44]
#: MiniLM rows of a sharded and a one-process build may differ by float16 rounding of different
#: batches; measured: 0 (bit-identical) here for these 48 and for 300 varied captions, float16 and float32.
MINILM_ATOL = 1e-3


class HashEncoder:
    """A stand-in encoder whose row depends on the text only (not on the batch), so any split of the
    work gives the same table; ``fail_after`` captions it raises, like an interrupted run."""

    dim = 8

    def __init__(self, name="text-hash", fail_after=None):
        self.name, self.fail_after, self.embedded = name, fail_after, 0

    def encode(self, texts):
        if self.fail_after is not None and self.embedded >= self.fail_after:
            raise RuntimeError("interrupted")
        self.embedded += len(texts)
        rows = [np.random.default_rng(zlib.crc32(t.encode())).standard_normal(self.dim) for t in texts]
        return torch.nn.functional.normalize(torch.tensor(np.array(rows), dtype=torch.float32), dim=-1)


def write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture(autouse=True)
def quiet(monkeypatch, caplog):
    monkeypatch.setattr(precompute.common, "PROGRESS_BARS", False)
    caplog.set_level(logging.INFO)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """CAPTIONS as 3 caption-only webdataset shards; returns the --train-data pattern."""
    root = tmp_path_factory.mktemp("wds")
    for k in range(3):
        write_tar(root / f"{k:05d}.tar", [(f"{i:05d}.txt", CAPTIONS[i].encode()) for i in range(16 * k, 16 * k + 16)])
    return str(root / "{00000..00002}.tar")


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer(MODEL)


def cli(data, out, *extra):
    return parse_args(["--model", MODEL, "--train-data", data, "--out", str(out), *extra])


def build_shards(args, tokenizer, encoder, count=2):
    for index in range(count):
        build(args, tokenizer, encoder, (index, count))


def assert_same_table(got: EmbeddingTable, want: EmbeddingTable, atol=0.0):
    np.testing.assert_array_equal(np.asarray(got.keys), np.asarray(want.keys))
    np.testing.assert_allclose(np.asarray(got.embeddings, np.float32), np.asarray(want.embeddings, np.float32),
                               atol=atol, rtol=0)
    for field in ("count", "dim", "dtype", "encoder", "model", "captions_read"):
        assert got.meta[field] == want.meta[field], field


def test_shard_jobs_and_merge_give_the_one_process_table(tmp_path, data, tokenizer, caplog):
    one = build(cli(data, tmp_path / "one"), tokenizer, HashEncoder())
    args = cli(data, tmp_path / "two", "--batch-size", "8")
    build_shards(args, tokenizer, HashEncoder())
    merged = merge_shards(args.out)
    assert_same_table(merged, one)
    assert len(merged) == 44 and merged.meta["captions_read"] == 48 and merged.meta["merged"]["shards"] == 2
    assert [EmbeddingTable(shard_dir(args.out, i, 2)).meta["captions_read"] for i in range(2)] == [32, 16]
    assert "shard 1/2 (1 source(s)): 16 captions read; 16 distinct captions in" in caplog.text
    assert "merged 2 shards into" in caplog.text
    assert "44 distinct captions (4 found in more than one shard)" in caplog.text
    caplog.clear()
    assert precompute.main(["--out", str(args.out), "--merge"]) == 0  # the CLI; unchanged shards: not redone
    assert "already merges these 2 sub-tables; nothing to do (48 captions read)" in caplog.text
    shutil.rmtree(tmp_path / "two" / "shards")
    assert precompute.main(["--out", str(args.out), "--merge"]) == 0
    assert "is a merged table whose sub-tables were deleted; nothing to merge" in caplog.text


@pytest.fixture(scope="module")
def minilm_table(tmp_path_factory, data, tokenizer):
    """The one-process MiniLM table of ``data`` (the reference for sharded and torchrun builds)."""
    return build(cli(data, tmp_path_factory.mktemp("minilm") / "one"), tokenizer, SentenceEncoder("minilm"))


def test_shards_with_minilm_give_the_one_process_table(tmp_path, data, tokenizer, minilm_table):
    args = cli(data, tmp_path / "two")
    build_shards(args, tokenizer, SentenceEncoder("minilm"))
    merged = merge_shards(args.out)
    assert_same_table(merged, minilm_table, atol=MINILM_ATOL)
    assert merged.meta["encoder"] == "all-MiniLM-L6-v2" and merged.dim == 384


def torchrun(*argv, timeout=240):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "xsample_openclip.precompute", "--model", MODEL, *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"))


def test_torchrun_two_ranks_give_the_one_process_table(tmp_path, data, minilm_table):
    done = torchrun("--train-data", data, "--out", str(tmp_path / "table"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_table(EmbeddingTable(tmp_path / "table"), minilm_table, atol=MINILM_ATOL)
    assert "[rank 1/2] shard 1/2 (1 source(s)): 16 captions read" in done.stderr
    assert "[rank 0/2] merged 2 shards into" in done.stderr and "[rank 1/2] merged" not in done.stderr


def _rank_main(rank, port, argv):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    sys.exit(precompute.main(argv))


def run_ranks(*argv, timeout=120):
    """Exit codes of 2 forked ranks running ``main`` in torchrun's environment (no re-imports: fast);
    a rank still running after ``timeout`` s is killed and reported as None (hanging)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ranks = [multiprocessing.get_context("fork").Process(target=_rank_main, args=(r, port, ["--model", MODEL, *argv]))
             for r in range(2)]
    for r in ranks:
        r.start()
    for r in ranks:
        r.join(timeout)
    codes = [r.exitcode for r in ranks]
    for r in ranks:
        if r.is_alive():
            r.kill()
    return codes


def test_ranks_check_their_shares_and_fail_together(tmp_path, data, tokenizer, minilm_table, capfd):
    table = str(minilm_table.path)
    capfd.readouterr()
    assert run_ranks("--train-data", data, "--out", table, "--check") == [0, 0]
    assert json.loads(capfd.readouterr().out.strip().splitlines()[-1]) == {
        "captions": 48, "distinct": 44, "missing_distinct": 0, "missing": 0, "skipped_not_utf8": 0,
        "unreadable_sources": 0}  # each rank's share, summed by rank 0 (distinct: the union)
    # rank 1's share (source 1, then notes.xyz) cannot be read: both ranks stop non-zero, none hangs
    bad = f"{data}::{tmp_path / 'notes.xyz'}"
    assert run_ranks("--train-data", bad, "--out", table, "--check") == [2, 2]
    assert run_ranks("--train-data", bad, "--out", str(tmp_path / "t")) == [1, 1]
    assert (shard_dir(tmp_path / "t", 0, 2) / "meta.json").is_file()  # rank 0's finished shard is kept
    assert not (tmp_path / "t" / "meta.json").exists()


def test_merge_refuses_missing_and_incompatible_shards(tmp_path, data, tokenizer, caplog):
    args = cli(data, tmp_path / "t")
    build(args, tokenizer, HashEncoder(), (0, 2))
    with pytest.raises(PrecomputeError, match=r"shard 1/2 is missing .* Run `python -m xsample_openclip.precompute "
                                              rf"--model {MODEL} --train-data DATA --out \S+ --shard 1/2`"):
        merge_shards(args.out)
    assert precompute.main(["--out", str(args.out), "--merge"]) == 2
    assert "then --merge again" in caplog.text

    build(args, tokenizer, HashEncoder("other-encoder"), (1, 2))
    with pytest.raises(PrecomputeError, match=r'encoder of shard\(s\) 1/2 is "other-encoder", not "text-hash" as in '
                                              r"the others; rebuild them with the same flags"):
        merge_shards(args.out)
    other_model = cli(data, tmp_path / "t")
    other_model.model = "xs-other-model"
    build(other_model, tokenizer, HashEncoder(), (1, 2))
    with pytest.raises(PrecomputeError, match=r'model of shard\(s\) 1/2 is "xs-other-model", not "xs-tiny-vit-32"'):
        merge_shards(args.out)

    build(args, tokenizer, HashEncoder(), (1, 2))
    with pytest.raises(PrecomputeError, match=rf"built for --model {MODEL}, not --model ViT-B-32"):
        merge_shards(args.out, model="ViT-B-32")
    with pytest.raises(PrecomputeError, match="built from another --train-data"):
        merge_shards(args.out, train_data=data.replace("00002", "00001"))
    build(args, tokenizer, HashEncoder(), (0, 3))
    with pytest.raises(PrecomputeError, match=r"sub-tables of 2 different splits \(N = 2, 3\)"):
        merge_shards(args.out)
    assert len(merge_shards(args.out, count=2)) == 44  # naming the split merges it


def test_interrupted_shard_and_merge_resume(tmp_path, data, tokenizer, caplog, monkeypatch):
    one = build(cli(data, tmp_path / "one"), tokenizer, HashEncoder())
    args = cli(data, tmp_path / "two", "--batch-size", "8")
    with pytest.raises(RuntimeError, match="interrupted"):
        build(args, tokenizer, HashEncoder(fail_after=8), (0, 2))  # 32 distinct captions, 8 per batch
    folder = shard_dir(args.out, 0, 2)
    assert json.loads((folder / "progress.json").read_text())["done"] == 8 and not (folder / "meta.json").exists()
    build(args, tokenizer, HashEncoder(), (1, 2))
    with pytest.raises(PrecomputeError, match=r"shard 0/2 is unfinished .* re-running it resumes"):
        merge_shards(args.out)

    resumed = HashEncoder()
    build(args, tokenizer, resumed, (0, 2))
    assert resumed.embedded == 24 and "resuming: 8/32 captions already embedded" in caplog.text
    again = HashEncoder()
    build(args, tokenizer, again, (0, 2))  # finished, same captions: kept as it is
    assert again.embedded == 0 and "is already a finished table of these 32 captions" in caplog.text

    copy_rows, copied = precompute.shards._copy_rows, []

    def copy_one_shard(*a):
        if copied:
            raise RuntimeError("disk full")
        copied.append(copy_rows(*a))

    monkeypatch.setattr(precompute.shards, "_copy_rows", copy_one_shard)
    with pytest.raises(RuntimeError, match="disk full"):
        merge_shards(args.out)
    monkeypatch.undo()
    assert json.loads((tmp_path / "two" / "merge-progress.json").read_text())["shards_done"] == 1
    merged = merge_shards(args.out)
    assert "resuming the merge: 1 shard(s) already copied" in caplog.text
    assert_same_table(merged, one)
    assert not (tmp_path / "two" / "merge-progress.json").exists()


def open_clip_captions(sources):
    """The captions OpenCLIP's own webdataset pipeline (its handlers and filter) hands to the tokenizer."""
    import webdataset as wds
    from open_clip_train.data import filter_no_caption_or_no_image, log_and_continue, tarfile_to_samples_nothrow

    pipeline = wds.DataPipeline(wds.SimpleShardList(sources), tarfile_to_samples_nothrow,
                                wds.select(filter_no_caption_or_no_image), wds.decode(handler=log_and_continue),
                                wds.to_tuple("txt"))
    return [text for (text,) in pipeline]


def test_webdataset_members_are_skipped_and_counted_like_open_clip(tmp_path, tokenizer, caplog, capsys):
    odd, broken = tmp_path / "00000.tar", tmp_path / "00001.tar"
    write_tar(odd, [("0000.jpg", b"x"), ("0000.txt", b"a red circle"),
                    ("0001.jpg", b"x"), ("0001.txt", b"a caf\xe9 \xff"),             # not UTF-8: skipped
                    ("0002.jpg", b"x"), ("0002.TXT", b"a blue square"),               # a caption (case)
                    ("0003.jpg", b"x"), ("0003.txt", b"a green star"), ("0003.en.txt", b"no caption"),
                    ("0004.txt", b"a caption without an image")])                     # kept: never fewer
    broken.write_bytes(b"not a tar" * 100)                                             # unreadable: skipped
    pattern = str(tmp_path / "{00000..00001}.tar")
    read = ReadReport()
    ours = list(iter_captions(pattern, report=read))
    assert ours == open_clip_captions([str(odd), str(broken)]) + ["a caption without an image"]
    assert (read.skipped_not_utf8, read.unreadable_sources) == (1, [str(broken)])

    caplog.clear()
    table = build(cli(pattern, tmp_path / "t"), tokenizer, HashEncoder())
    assert len(table) == 4 and table.meta["skipped_not_utf8"] == 1 and table.meta["unreadable_sources"] == [str(broken)]
    final = caplog.records[-1].getMessage()
    assert "4 captions read; 1 webdataset .txt member(s) skipped: not valid UTF-8" in final
    assert "1 source(s) unreadable and skipped" in final

    capsys.readouterr()
    assert precompute.main(["--model", MODEL, "--train-data", pattern, "--out", str(tmp_path / "t"), "--check"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {
        "captions": 4, "distinct": 4, "missing_distinct": 0, "missing": 0, "skipped_not_utf8": 1,
        "unreadable_sources": 1}

    args = cli(pattern, tmp_path / "sharded")
    build_shards(args, tokenizer, HashEncoder())
    merged = merge_shards(args.out)
    assert merged.meta["skipped_not_utf8"] == 1 and merged.meta["unreadable_sources"] == [str(broken)]
    assert "shard 1/2 (1 source(s)): 0 captions read; 1 source(s) unreadable" in caplog.text
    assert "4 captions read; 1 webdataset .txt member(s) skipped" in caplog.records[-1].getMessage()


# --- one writer per folder (precompute/lock.py) -------------------------------------------------

from xsample_openclip.precompute.lock import LOCK_FILE, writer_lock  # noqa: E402

PRECOMPUTE_ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
for _name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):  # as under srun without torchrun
    PRECOMPUTE_ENV.pop(_name, None)


class SecondWriterEncoder(HashEncoder):
    """Before embedding its first batch (its --out locked, half written), starts a second unsharded
    ``python -m xsample_openclip.precompute`` on the same --out and keeps what it did: deterministic,
    no timing involved."""

    def __init__(self, argv):
        super().__init__()
        self.argv, self.second = argv, None

    def encode(self, texts):
        if self.second is None:
            self.second = subprocess.run([sys.executable, "-m", "xsample_openclip.precompute", *self.argv],
                                         capture_output=True, text=True, timeout=300, env=PRECOMPUTE_ENV)
        return super().encode(texts)


def test_a_second_writer_on_one_out_is_refused_while_the_first_completes(tmp_path, data, tokenizer):
    out = tmp_path / "table"
    argv = ["--model", MODEL, "--train-data", data, "--out", str(out), "--batch-size", "8"]
    encoder = SecondWriterEncoder(argv)
    table = build(parse_args(argv), tokenizer, encoder)
    second = encoder.second
    assert second is not None and second.returncode == 2, second.stderr[-3000:]
    assert (f"{out} is being written by another precompute process (pid {os.getpid()} on {socket.gethostname()}"
            in second.stderr)
    assert "`--shard I/N` for I = 0 .. N-1 with the same --out, then `--out OUT --merge`" in second.stderr
    assert "torchrun --nproc_per_node N" in second.stderr and "WORLD_SIZE unset" in second.stderr
    assert "Traceback" not in second.stderr
    # the first writer finished untouched: the same table as an undisturbed build
    assert_same_table(table, build(cli(data, tmp_path / "reference", "--batch-size", "8"), tokenizer, HashEncoder()))
    assert not (out / "scan").exists() and (out / LOCK_FILE).read_text() == ""  # released, holder info cleared


@contextlib.contextmanager
def held_by_another_process(folder):
    """Another process holding ``folder``'s write lock, as a running precompute job does; yields it."""
    code = ("import fcntl, json, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); "
            "os.write(fd, json.dumps({'pid': os.getpid(), 'host': 'h', 'since': 't', 'command': 'c'}).encode()); "
            "print('held', flush=True); sys.stdin.read()")
    Path(folder).mkdir(parents=True, exist_ok=True)
    other = subprocess.Popen([sys.executable, "-c", code, str(Path(folder) / LOCK_FILE)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        yield other
    finally:
        other.stdin.close()
        other.wait(timeout=60)


def test_shard_jobs_write_side_by_side_and_each_folder_has_one_writer(tmp_path, data, tokenizer):
    args = cli(data, tmp_path / "t", "--batch-size", "8")
    shard0 = shard_dir(args.out, 0, 2)
    with held_by_another_process(shard0) as other:  # a job is building shard 0/2 of this --out
        build(args, tokenizer, HashEncoder(), (1, 2))  # shard 1/2 of the same --out goes on beside it
        busy = f"{shard0} is being written by another precompute process (pid {other.pid} on h, since t: c)"
        with pytest.raises(PrecomputeError) as second_job:
            build(args, tokenizer, HashEncoder(), (0, 2))  # a second job for shard 0/2
        with pytest.raises(PrecomputeError) as early_merge:
            merge_shards(args.out)  # never copies a sub-table a job is writing
        assert busy in str(second_job.value) and busy in str(early_merge.value)
        assert sorted(p.name for p in shard0.iterdir()) == [LOCK_FILE]  # the refused job wrote nothing
    build(args, tokenizer, HashEncoder(), (0, 2))
    with held_by_another_process(args.out) as other:  # a merge (or a one-process build) is writing --out
        for attempt in (lambda: merge_shards(args.out), lambda: build(cli(data, args.out), tokenizer, HashEncoder())):
            with pytest.raises(PrecomputeError, match=f"pid {other.pid} on h"):
                attempt()
        assert not (tmp_path / "t" / "meta.json").exists() and not (tmp_path / "t" / "scan").exists()
    merged = merge_shards(args.out)
    assert_same_table(merged, build(cli(data, tmp_path / "one"), tokenizer, HashEncoder()))


def test_a_crashed_writer_leaves_no_lock_even_with_a_forked_child_alive(tmp_path):
    """The OS drops a dead writer's lock; a forked worker the crash left behind does not keep it."""
    code = ("import os, signal, sys, time\n"
            "from xsample_openclip.precompute.lock import writer_lock\n"
            "with writer_lock(sys.argv[1]):\n"
            "    child = os.fork()\n"
            "    if child == 0:\n"
            "        time.sleep(120); os._exit(0)\n"
            "    print(child, flush=True); os.kill(os.getpid(), signal.SIGKILL)\n")
    writer = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env=PRECOMPUTE_ENV)
    child = int(writer.stdout.readline())
    try:
        assert writer.wait(timeout=60) == -9
        assert "pid" in (tmp_path / LOCK_FILE).read_text()  # the crash left its holder info behind
        assert Path(f"/proc/{child}/stat").read_text().split()[2] in "RSD"  # the worker is alive
        with writer_lock(tmp_path):  # taken at once: nobody holds it
            pass
    finally:
        os.kill(child, 9)
