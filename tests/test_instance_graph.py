"""``--loss xclr --xsample-xclr-graph instance`` (SimCLR) uses no caption targets, so its start-up touches none.

Under the default ``--xsample-tau-s auto`` it must not load the caption encoder, read a calibration sample
or apply the tau_s resume rules: a run trains with the encoder counted (not once), params.txt records tau_s
as unused, and what the rules of a tau_s would refuse (a resume at another global batch, remote training
data that start-up cannot sample) starts. Runs go through OpenCLIP's real ``main`` in this process
(``fault_runner.run_main``) so the encoder can be counted; refusals are checked at start-up
(``init_distributed_device``), where main meets them before writing anything.
"""
import pytest
from open_clip_train import distributed, params

from fault_runner import run_main
from xsample_openclip.targets import encoders

MODEL = "xs-tiny-vit-32"
SIMCLR = ("--loss", "xclr", "--xsample-xclr-graph", "instance", "--xsample-views", "2", "--lock-text",
          "--lock-text-freeze-layer-norm")


def argv(data, logs, name, *extra, batch=8, dataset_type="csv"):
    return ["--train-data", str(data), "--dataset-type", dataset_type, "--model", MODEL, "--batch-size", str(batch),
            "--epochs", "1", "--workers", "0", "--device", "cpu", "--precision", "fp32", "--lr", "1e-3",
            "--warmup", "1", "--seed", "0", f"--logs={logs}", "--name", name, *SIMCLR, *extra]


def read_params(run):
    return dict(line.split(": ", 1) for line in (run / "params.txt").read_text().splitlines())


class CountingEncoder(encoders.SentenceEncoder):
    loaded = 0

    def __init__(self, *args, **kwargs):
        type(self).loaded += 1
        super().__init__(*args, **kwargs)


@pytest.fixture(scope="module")
def simclr(tmp_path_factory, csv_data):
    """One epoch of SimCLR under the default ``auto``, the caption encoder counted."""
    logs = tmp_path_factory.mktemp("simclr") / "logs"
    with pytest.MonkeyPatch.context() as mp:
        CountingEncoder.loaded = 0
        mp.setattr(encoders, "SentenceEncoder", CountingEncoder)
        result = run_main(argv(csv_data, logs, "simclr"))
        loaded = CountingEncoder.loaded
    return logs, result, loaded


def test_simclr_trains_without_the_caption_encoder_and_records_tau_s_unused(simclr):
    logs, result, loaded = simclr
    assert result is None and loaded == 0
    run = logs / "simclr"
    assert (run / "checkpoints" / "epoch_1.pt").is_file()
    p = read_params(run)
    assert p["xsample_tau_s"] == "auto"  # as given: nothing was calibrated
    assert p["xsample_tau_s_calibration"].startswith("unused: --xsample-xclr-graph instance")
    log = (run / "out.log").read_text()
    assert "X-Sample tau_s calibrated" not in log and "caption targets from" not in log
    assert "X-Sample tau_s: unused" in log


def start(data, logs, name, *extra, **kw):
    args = params.parse_args(argv(data, logs, name, *extra, **kw))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(encoders, "SentenceEncoder", None)  # any use of the encoder would fail here
        distributed.init_distributed_device(args)
    return args


def test_simclr_resumes_at_another_global_batch(simclr, csv_data):
    """The tau_s resume rules would refuse this resume (another global batch) over a tau_s SimCLR ignores."""
    logs, _, _ = simclr
    args = start(csv_data, logs, "simclr", "--resume", "latest", batch=4)
    assert args.xsample_tau_s == "auto" and args.xsample_tau_s_calibration.startswith("unused")


def test_simclr_starts_on_remote_training_data(tmp_path):
    """Remote data cannot be sampled at start-up, which ``auto`` needs only for a caption graph."""
    args = start("s3://bucket/shards-{000000..000003}.tar", tmp_path / "logs", "remote",
                 dataset_type="webdataset")
    assert args.xsample_tau_s_calibration.startswith("unused")
    assert any("X-Sample tau_s: unused" in note for note in args.loss_run.notes)


def test_simclr_refuses_caption_graph_flags_it_would_ignore(tmp_path, csv_data, capsys):
    """Centring statistics and an embedding table only shape caption targets, which SimCLR has none of."""
    for flag in (["--xsample-graph-centre"], ["--xsample-embeddings", str(tmp_path)]):
        with pytest.raises(SystemExit) as exc:
            params.parse_args(argv(csv_data, tmp_path / "logs", "x", *flag))
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"{flag[0]} " in err and "--xsample-xclr-graph instance" in err
