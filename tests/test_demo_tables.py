"""The per-seed files behind the results tables, and the tables regenerated from them alone:
every number is checked against a computation written here, with textbook t quantiles."""
import csv
import math
import statistics

import pytest

from xsample_openclip.demo import tables
from xsample_openclip.demo.datasets import EMOJI
from xsample_openclip.demo.stats import mean_ci, t_quantile
from xsample_openclip.demo.summary import summarize

#: Student's t, 0.975 quantile, from printed tables.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262, 30: 2.042}

PER_SEED = """run,loss,seed,zero-shot top-1,BG-Gap (lower is better)
clip-s0,clip,0,10.0,30.0
clip-s1,clip,1,20.0,32.0
clip-s2,clip,2,30.0,
xsample-s0,xsample,0,12.5,20.0
xsample-s1,xsample,1,21.0,25.0
xsample-s2,xsample,2,35.0,
"""


def cells(table, label):
    line = next(line for line in table.splitlines() if line.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


def expected_delta(deltas):
    mean, sd = statistics.mean(deltas), statistics.stdev(deltas)
    half = T975[len(deltas) - 1] * sd / math.sqrt(len(deltas))
    return mean, sd, mean - half, mean + half


@pytest.mark.parametrize("df", sorted(T975))
def test_t_quantile_matches_printed_tables(df):
    assert t_quantile(0.975, df) == pytest.approx(T975[df], abs=6e-4)


def test_mean_ci_needs_two_values():
    assert mean_ci([1.0]) is None
    lo, hi = mean_ci([1.0, 3.0])
    assert (lo + hi) / 2 == pytest.approx(2.0)
    assert hi - lo == pytest.approx(2 * T975[1], rel=1e-4)  # sd sqrt(2), n 2: half-width t * sqrt(2) / sqrt(2)


def test_table_from_a_per_seed_file_alone(tmp_path):
    path = tmp_path / "study.csv"
    path.write_text(PER_SEED)
    table = tables.regenerate([path])
    assert table.splitlines()[0].startswith("| metric (%; 3 seeds: 0, 1, 2) | clip | xsample | Δ xsample − clip")

    clip, xs = [10.0, 20.0, 30.0], [12.5, 21.0, 35.0]
    mean, sd, lo, hi = expected_delta([x - c for x, c in zip(xs, clip)])
    assert cells(table, "zero-shot top-1") == [
        f"{statistics.mean(clip):.1f} ± {statistics.stdev(clip):.1f}",
        f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}",
        f"{mean:+.1f} ± {sd:.1f} [{lo:+.1f}, {hi:+.1f}]",
        "+2.5, +1.0, +5.0"]
    assert (lo, hi) == pytest.approx((-2.19, 7.85), abs=0.01)  # by hand: 2.833 -+ 4.303 * 2.021 / sqrt(3)

    mean, sd, lo, hi = expected_delta([20.0 - 30.0, 25.0 - 32.0])  # seed 2 has no BG-Gap: two pairs
    assert cells(table, "BG-Gap (lower is better)")[2:] == [f"{mean:+.1f} ± {sd:.1f} [{lo:+.1f}, {hi:+.1f}]",
                                                             "-10.0, -7.0"]


def test_baseline_choice_and_merged_studies(tmp_path, capsys):
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text(PER_SEED)
    second.write_text("run,loss,seed,zero-shot top-1\nclip-s0,clip,0,10.0\nclip-s1,clip,1,20.0\n"
                      "tau0.2-s0,tau0.2,0,15.0\ntau0.2-s1,tau0.2,1,26.0\n")
    assert tables.main([str(first), str(second)]) == 0
    table = capsys.readouterr().out
    assert "| clip | xsample | tau0.2 |" in table
    assert cells(table, "zero-shot top-1")[5] == "+2.5, +1.0, +5.0"
    assert cells(table, "zero-shot top-1")[6] == "+5.0, +6.0"
    flipped = tables.regenerate([first], baseline="xsample")
    assert cells(flipped, "zero-shot top-1")[3] == "-2.5, -1.0, -5.0"

    second.write_text("run,loss,seed,zero-shot top-1\nclip-s0,clip,0,11.0\n")
    with pytest.raises(ValueError, match="clip-s0.*same runs"):
        tables.regenerate([first, second])
    second.write_text("loss,value\nclip,1\n")
    with pytest.raises(ValueError, match="no column run, seed"):
        tables.regenerate([second])


def _results_csv(path, numbers):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "dataset", "metric", "value"])
        for (run, dataset, metric), value in numbers.items():
            writer.writerow([run, dataset, metric, value])


def test_the_demo_summary_writes_the_per_seed_file_its_table_comes_back_from(tmp_path):
    numbers = {}
    for i, run in enumerate(["clip-s0", "clip-s1", "xsample-s0", "xsample-s1"]):
        for j, h in enumerate(EMOJI.headline):
            numbers[(run, h.at("test"), h.metric)] = round(0.1 + 0.07 * i + 0.013 * j + 0.05 * (i % 2) ** 2, 4)
    _results_csv(tmp_path / "results.csv", numbers)
    table, _ = summarize(tmp_path / "results.csv", tmp_path, ["clip", "xsample"], EMOJI.headline, "test",
                         EMOJI.primary, [0, 1])
    per_seed = tmp_path / "summary-test-per-seed.csv"
    assert tables.regenerate([per_seed]) == table
    with open(per_seed, newline="") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"clip-s0", "clip-s1", "xsample-s0", "xsample-s1"}
    gap = "BG-Gap = mixed_same - mixed_rand (lower is better)"
    assert float(rows["xsample-s1"][gap]) == pytest.approx(100 * numbers[("xsample-s1", "emoji_bg_test", "bg_gap")])
    assert rows["clip-s1"]["loss"] == "clip" and rows["clip-s1"]["seed"] == "1"

    converted = tables.from_summary_json(tmp_path / "summary-test.json", tmp_path / "converted.csv")
    assert converted.read_text() == per_seed.read_text()


def test_every_committed_per_seed_file_regenerates_a_table_printed_in_the_docs():
    """The docs' tables are the committed files' tables, row for row (a hand-edited or stale number fails):
    each ``docs/studies/results/*.csv`` regenerates a table whose every data row appears in one of the study
    pages ``docs/studies/*.md``."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    studies = root / "docs" / "studies"
    files = sorted((studies / "results").glob("*.csv"))
    assert len(files) >= 5, files
    pages = sorted(studies.glob("*.md"))
    assert {p.name for p in pages} >= {"results.md", "validation.md", "graph-study.md"}, pages
    docs = "\n".join(page.read_text() for page in pages)
    printed = {line.strip() for line in docs.splitlines()}
    for path in files:
        rows = [line for line in tables.regenerate([path]).splitlines() if line.startswith("| ")]
        assert len(rows) >= 3, path
        missing = [line for line in rows if line.strip() not in printed]
        assert not missing, f"{path.name}: rows not in the docs (regenerate the table): {missing[:2]}"


def test_the_forest_figure_shows_the_tables_paired_differences(tmp_path):
    """``demo.forest`` reads the per-seed file the table comes from: its mean and interval are the table's Δ
    cell, and it refuses a column the file lacks."""
    from pathlib import Path

    from xsample_openclip.demo import forest

    path = tmp_path / "study.csv"
    path.write_text(PER_SEED)
    row = forest.paired_row("top-1", path, "zero-shot")
    mean, sd, lo, hi = expected_delta([2.5, 1.0, 5.0])
    assert (row.mean, row.low, row.high) == pytest.approx((mean, lo, hi), abs=1e-3)  # t printed to 3 decimals
    assert row.per_seed == pytest.approx([2.5, 1.0, 5.0]) and not row.lower_is_better
    gap = forest.paired_row("gap", path, "BG-Gap")
    assert gap.lower_is_better and gap.per_seed == pytest.approx([-10.0, -7.0])
    with pytest.raises(ValueError, match="no column starts with 'recall'"):
        forest.paired_row("x", path, "recall")
    assert forest.main(["--out", str(tmp_path / "f.png"), "--row", "top-1", str(path), "zero-shot"]) == 0
    assert (tmp_path / "f.png").stat().st_size > 1000

    committed = Path(__file__).resolve().parents[1] / "docs" / "studies" / "results"
    row = forest.paired_row("emoji", committed / "graph-test-emoji.csv", "zero-shot top-1")
    table = tables.regenerate([committed / "graph-test-emoji.csv"])
    assert f"{row.mean:+.1f} ± " in cells(table, "zero-shot top-1, 10 concepts")[2]
    assert f"[{row.low:+.1f}, {row.high:+.1f}]" in cells(table, "zero-shot top-1, 10 concepts")[2]
    assert (committed / "verdict.png").exists()
