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
