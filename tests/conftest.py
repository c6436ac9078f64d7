"""Shared test set-up: one thread per process (2-core CI), tiny data and OpenCLIP patched in-process."""
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny_data  # noqa: E402


@pytest.fixture(scope="session")
def csv_data(tmp_path_factory):
    return tiny_data.write_csv(tmp_path_factory.mktemp("csv"), n=64)


@pytest.fixture(scope="session")
def wds_data(tmp_path_factory):
    return tiny_data.write_shards(tmp_path_factory.mktemp("wds"), n=64, shards=2)
