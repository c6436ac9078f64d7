"""The sigmoid X-Sample loss (``--loss xsample-siglip``) in several processes through OpenCLIP's own ``main``
(torchrun, gloo, CPU), checked against one process and against a float64 computation from the formula.

The data has 16 samples; one process trains with batch 16, P processes with batch 16 / P each, so every
step's global batch is the whole data set. Each rank's loss is SigLIP's: its own images against every
text of the global batch (the texts travel between ranks as ``--loss-dist-impl`` says), divided by its
own batch. Checked, for 2 processes with ``bidir`` (SigLIP's default) and ``gather``, and for 4 processes
with ``bidir`` (one two-way exchange plus the one-way remainder exchange, which only an even world size
of at least 4 reaches):
- the first loss rank 0 logs equals the formula on the saved initial weights for rank 0's rows
  (``DistributedSampler``'s) against all 16 texts;
- the weights after 2 steps equal the one-process run's (DDP averages the ranks' gradients, and each
  rank's loss sends gradient back to the texts it received, so the gradient is the one-process one),
  and both runs moved.
"""
import pytest

import cli_runs as cr
import tiny_data

N = 16
MODEL = "xs-tiny-sigmoid-32"
TAU_S = 0.1
FLAGS = ("--loss", "xsample-siglip", "--xsample-tau-s", str(TAU_S))
EPOCHS = 2
#: As in test_cli_multiprocess.py: float32 rounding of two equal gradients stays far below this.
SAME_UPDATE = 1e-3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mp-sigmoid")
    csv = tiny_data.write_csv(root / "data", n=N)
    init = cr.save_init(root / "init.pt", model=MODEL)
    img, txt, scale, captions, bias = cr.features(init, csv, model=MODEL, bias=True)
    return {"root": root, "csv": csv, "init": init, "img": img, "txt": txt, "scale": scale, "bias": bias,
            "captions": cr.minilm(captions)}


def run(setup, name, nproc, *extra):
    cwd = setup["root"] / name
    cwd.mkdir()
    argv = cr.train_argv(setup["csv"], setup["init"], N // nproc, *FLAGS, *extra, model=MODEL, epochs=EPOCHS)
    return cr.launch(cwd, argv, nproc=nproc)[0]


def reference(setup, rows=None):
    return cr.sigmoid_loss(setup["img"], setup["txt"], setup["scale"], setup["bias"], setup["captions"], TAU_S, rows)


@pytest.fixture(scope="module")
def single(setup):
    return run(setup, "one", 1)


def test_one_process_first_loss_is_the_formula(setup, single):
    assert cr.logged_losses(single)[0] == pytest.approx(reference(setup), rel=2e-4)


@pytest.mark.parametrize("nproc, impl", [(2, "bidir"), (2, "gather"), (4, "bidir")])
def test_processes_match_the_formula_and_one_process(setup, single, nproc, impl):
    run_dir = run(setup, f"p{nproc}-{impl}", nproc, "--loss-dist-impl", impl)
    log = (run_dir / "out.log").read_text()
    assert f"CPU distributed training ({nproc} processes, backend gloo)" in log
    assert f"target=kernel, dist_impl={impl}" in log
    rows = cr.rank_rows(N, nproc, 0)
    expected = reference(setup, rows)
    own_texts_only = cr.sigmoid_loss(setup["img"][rows], setup["txt"][rows], setup["scale"], setup["bias"],
                                     setup["captions"][rows], TAU_S)
    assert expected != pytest.approx(own_texts_only, rel=1e-3)  # the other ranks' texts change the number
    assert cr.logged_losses(run_dir)[0] == pytest.approx(expected, rel=2e-4)
    difference = cr.update_difference(cr.weights(run_dir, EPOCHS), cr.weights(single, EPOCHS), setup["init"])
    assert difference < SAME_UPDATE
