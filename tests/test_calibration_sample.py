"""``--xsample-tau-s auto`` calibrates on a uniform, seeded sample of the whole data set, not its first rows.

The data: 4 topics (animals, food, vehicles, weather) of 1,024 distinct captions each, with no word
shared between topics, sorted by topic (as a CSV or shards written per class are), and the same
captions shuffled. Captions are embedded by a bag-of-words encoder written here (a fixed random
vector per word, summed and normalised) through a precomputed table, so each calibration runs the
real start-up path (``init_distributed_device``: sampling, table lookup, tau_s solve) in seconds.
Same-topic captions are alike and cross-topic ones are not, so a sample of one or two topics gives a
sharper tau_s than one of all four: the first 2,048 sorted rows (two topics) are the biased estimate.
"""
import hashlib
import random
import re

import numpy as np
import pytest
import torch
from open_clip import get_tokenizer
from PIL import Image
from open_clip_train import distributed, params

from xsample_openclip.data import writers
from xsample_openclip.precompute.tables import build_table
from xsample_openclip.targets.calibrate import similarities_of, tau_for_self_mass
from xsample_openclip.targets.flags import CALIBRATION_CAPTIONS
from xsample_openclip.targets.sampling import sample_uniform

MODEL = "xs-tiny-vit-32"
TOPICS = [
    (["small", "big", "young", "old", "sleepy", "happy", "wet", "furry"],
     ["dog", "cat", "horse", "rabbit", "fox", "sheep", "goat", "duck"],
     ["running", "sleeping", "eating", "jumping"], ["meadow", "barn", "forest", "pond"]),
    (["fresh", "spicy", "sweet", "warm", "crispy", "creamy", "salty", "smoked"],
     ["pasta", "soup", "salad", "pizza", "curry", "bread", "cake", "noodles"],
     ["served", "cooked", "sliced", "baked"], ["plate", "bowl", "tray", "pan"]),
    (["red", "blue", "rusty", "shiny", "vintage", "electric", "dusty", "sporty"],
     ["car", "truck", "bus", "tractor", "scooter", "van", "train", "motorbike"],
     ["parked", "driving", "waiting", "turning"], ["street", "highway", "garage", "bridge"]),
    (["grey", "stormy", "misty", "sunny", "windy", "frozen", "humid", "cloudy"],
     ["sky", "morning", "evening", "coast", "valley", "summit", "harbour", "island"],
     ["under", "after", "before", "during"], ["rain", "snow", "thunder", "fog"]),
]
SELF_MASS, BATCH, SEEDS = 0.7, 256, range(5)


def topic_captions():
    """4 x 1,024 distinct captions, sorted by topic."""
    return [f"{a} {n} {v} {p}" for adjs, nouns, verbs, places in TOPICS
            for a in adjs for n in nouns for v in verbs for p in places]


class BagOfWords:
    """A caption's embedding: the normalised sum of a fixed random 64-d vector per word."""

    name, dim = "bag-of-words", 64

    @staticmethod
    def word(w):
        seed = int(hashlib.sha256(w.encode()).hexdigest()[:8], 16)
        return torch.randn(64, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def encode(self, texts):
        v = torch.stack([sum(self.word(w) for w in t.split()) for t in texts])
        return torch.nn.functional.normalize(v, dim=-1).float()


def tau_of(captions):
    """Independent reference: tau_s for a list of captions, from the encoder directly (no table)."""
    return tau_for_self_mass(similarities_of(BagOfWords().encode(captions).double()), SELF_MASS, BATCH)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("topics")
    caps = topic_captions()
    shuffled = random.Random(0).sample(caps, len(caps))
    image = writers.jpeg_bytes(Image.new("RGB", (8, 8)))
    out = {}
    for name, order in (("sorted", caps), ("shuffled", shuffled)):
        path = root / f"{name}.csv"
        path.write_text("filepath\ttitle\n" + "".join(f"/none/{i}.jpg\t{c}\n" for i, c in enumerate(order)))
        out[name] = str(path)
    # webdataset: 2 shards of 2,048 captions each, sorted by topic (shard 0: topics 0-1, shard 1: 2-3)
    shards = writers.write_webdataset(root / "wds", [(f"{i:05d}", image, c) for i, c in enumerate(caps)], 2048)
    out["wds"] = writers.brace_pattern(shards)
    out["table"] = str(root / "table")
    build_table(root / "table", iter(caps), get_tokenizer(MODEL), BagOfWords(), MODEL)
    return out


def calibrate(tmp_path, data, train_data, seed, *extra):
    """tau_s and the calibration note of a real start-up (rank 0's checks, as main runs them)."""
    args = params.parse_args(["--train-data", train_data, "--model", MODEL, "--loss", "xsample",
                              "--xsample-embeddings", data["table"], "--xsample-check-captions", "0",
                              "--xsample-self-mass", str(SELF_MASS), "--batch-size", str(BATCH),
                              "--seed", str(seed), "--logs", str(tmp_path), "--device", "cpu", *extra])
    distributed.init_distributed_device(args)
    note = next(n for n in args.loss_run.notes if n.startswith("X-Sample tau_s calibrated"))
    return args.xsample_tau_s, note


@pytest.fixture(scope="module")
def shuffled_taus(data, tmp_path_factory):
    """The estimator's own spread: tau_s of the shuffled CSV over sample seeds."""
    return [calibrate(tmp_path_factory.mktemp("s"), data, data["shuffled"], s)[0] for s in SEEDS]


def test_sorted_csv_calibrates_like_its_shuffled_copy_and_unlike_its_first_rows(data, shuffled_taus, tmp_path):
    sorted_taus = [calibrate(tmp_path, data, data["sorted"], s)[0] for s in SEEDS]
    mean, sd = np.mean(shuffled_taus), np.std(shuffled_taus, ddof=1)
    first_rows = tau_of(topic_captions()[:CALIBRATION_CAPTIONS])
    everything = tau_of(topic_captions())
    print(f"\ntau_s: shuffled {mean:.4f} +- {sd:.4f} (seeds), sorted {np.mean(sorted_taus):.4f} +- "
          f"{np.std(sorted_taus, ddof=1):.4f}, all 4,096 captions {everything:.4f}, first 2,048 rows {first_rows:.4f}")
    assert sd > 0  # different seeds draw different samples
    # sorted and shuffled: two sets of 5 independent draws of the same estimator; their means differ by
    # sd * sqrt(2/5) ~ 0.63 sd in standard deviation, 4 sd is far beyond chance
    assert abs(np.mean(sorted_taus) - mean) < 4 * sd
    assert abs(everything - mean) < 4 * sd  # and both estimate the whole data set's tau_s
    assert abs(first_rows - mean) > 20 * sd  # the first rows are biased far beyond the spread


def test_same_seed_same_sample_and_the_note_says_what_was_sampled(data, shuffled_taus, tmp_path):
    tau, note = calibrate(tmp_path, data, data["shuffled"], 0)
    assert tau == shuffled_taus[0]
    assert "2048 captions sampled uniformly (seed 0) from 4096 captions of all 1 source(s)" in note
    sample = sample_uniform(data["sorted"], CALIBRATION_CAPTIONS, seed=3)
    assert sample.captions == sample_uniform(data["sorted"], CALIBRATION_CAPTIONS, seed=3).captions
    per_topic = np.bincount([topic_captions().index(c) // 1024 for c in sample.captions], minlength=4)
    # hypergeometric: 512 expected per topic, standard deviation ~19.6; 6 sd either side
    assert per_topic.sum() == 2048 and all(abs(n - 512) < 120 for n in per_topic), per_topic


def test_topic_sorted_webdataset_shards_calibrate_like_the_shuffled_data(data, shuffled_taus, tmp_path):
    """Two shards, each sorted (topics 0-1, then 2-3): reading each shard's first rows gives two topics."""
    taus, notes = zip(*(calibrate(tmp_path, data, data["wds"], s) for s in SEEDS))
    mean, sd = np.mean(shuffled_taus), np.std(shuffled_taus, ddof=1)
    caps = topic_captions()
    first_of_each_shard = tau_of(caps[:1024] + caps[2048:3072])
    print(f"\nwebdataset tau_s {np.mean(taus):.4f} +- {np.std(taus, ddof=1):.4f}; shuffled CSV {mean:.4f} +- {sd:.4f}; "
          f"first 1,024 of each shard {first_of_each_shard:.4f}")
    assert abs(np.mean(taus) - mean) < 4 * sd
    assert abs(first_of_each_shard - mean) > 20 * sd
    assert "2048 captions sampled uniformly (seed 0) from 4096 captions of all 2 source(s)" in notes[0]


def test_many_shards_are_sampled_then_read_in_full(data, tmp_path):
    """Beyond ``max_sources``, a seeded sample of shards is read whole; the description says so."""
    caps = topic_captions()
    shards = writers.write_webdataset(tmp_path, [(f"{i:05d}", b"x", c) for i, c in enumerate(caps)], 256)
    sample = sample_uniform(writers.brace_pattern(shards), 500, seed=1, max_sources=4)
    assert sample.sources == 16 and sample.sources_read == 4 and sample.population == 4 * 256
    assert "a seeded sample of 4 of 16 local source(s), each read in full" in sample.describe()
    shard_of = {c: i // 256 for i, c in enumerate(caps)}
    assert len({shard_of[c] for c in sample.captions}) == 4
    again = sample_uniform(writers.brace_pattern(shards), 500, seed=1, max_sources=4)
    assert again.captions == sample.captions
    assert sample_uniform(writers.brace_pattern(shards), 500, seed=2, max_sources=4).captions != sample.captions


def test_a_csv_without_the_caption_column_is_refused(data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        calibrate(tmp_path, data, data["sorted"], 0, "--csv-caption-key", "caption")
    err = capsys.readouterr().err
    assert re.search(r"--xsample-tau-s auto could not read the training captions of --train-data .*caption", err)
