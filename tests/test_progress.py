"""Progress bars written to a file stay readable: plain lines, rarely, and the final state; a terminal
still gets tqdm's in-place bar."""
import io

from xsample_openclip import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_written_to_a_file_is_a_few_plain_lines(monkeypatch):
    clock = iter(range(0, 10_000, 3))  # each read of the clock is 3 s later: 1000 steps take about an hour
    monkeypatch.setattr("tqdm.std.time", lambda: next(clock))
    log = io.StringIO()
    with progress.progress_bar(total=1000, desc="train", unit="step", file=log, leave=True) as bar:
        for _ in range(1000):
            bar.update(1)
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text
    assert 2 <= len(lines) <= 1000 * 3 * 2 // progress.LOG_INTERVAL, len(lines)  # one line a minute at most
    assert lines[-1].startswith("train: 100%") and "1000/1000" in lines[-1]
    assert all(line.startswith("train:") for line in lines)


def test_a_terminal_gets_the_usual_redrawn_bar():
    screen = Terminal()
    with progress.progress_bar(total=3, desc="train", file=screen, mininterval=0) as bar:
        for _ in range(3):
            bar.update(1)
    assert screen.getvalue().count("\r") >= 3


def test_clip_benchmarks_own_bars_become_plain_lines_in_a_file_and_are_restored(monkeypatch, capsys):
    """clip_benchmark draws a tqdm bar per class list and per batch loop; redirected, each redraw was one
    more copy of the bar in the log. Inside ``package_progress_bars`` its real ``zero_shot_classifier``
    writes plain lines through the package's bar; outside, clip_benchmark's own tqdm is back."""
    import importlib

    import torch
    from clip_benchmark.metrics import zeroshot_classification

    from xsample_openclip.eval.benchmark import BAR_MODULES, package_progress_bars

    class Model:
        def encode_text(self, tokens):
            return torch.ones(len(tokens), 4)

    def classify():
        clock = iter(range(0, 10_000, 3))  # 3 s per read of the clock: 300 classes take about 15 minutes
        monkeypatch.setattr("tqdm.std.time", lambda: next(clock))
        zeroshot_classification.zero_shot_classifier(Model(), lambda texts: torch.zeros(len(texts), 2),
                                                     [f"class {i}" for i in range(300)], ["a {c}"], "cpu",
                                                     amp=False)
        return capsys.readouterr().err

    originals = {name: importlib.import_module(name).tqdm for name in BAR_MODULES}
    assert "\r" in classify()  # clip_benchmark's own bar, redrawn into the captured (non-terminal) stream
    with package_progress_bars():
        assert all(importlib.import_module(name).tqdm is progress.progress_bar for name in BAR_MODULES)
        text = classify()
    lines = text.splitlines()
    assert "\r" not in text and 1 <= len(lines) <= 20 and "300/300" in lines[-1], text[-300:]
    assert {name: importlib.import_module(name).tqdm for name in BAR_MODULES} == originals
