"""``cli_runs.update_difference``, the check the end-to-end tests compare two runs' weights by, must refuse
runs that did not move: two runs without a training step have equal (zero) updates and prove nothing."""
import pytest
import torch

import cli_runs as cr


@pytest.fixture
def init(tmp_path):
    torch.manual_seed(0)
    state = {"w": torch.randn(8, 4), "b": torch.randn(4)}
    torch.save({"epoch": 0, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "init.pt")
    return str(tmp_path / "init.pt"), state


def moved(state, by, keys=("w", "b")):
    torch.manual_seed(1)
    return {k: v + by * torch.randn_like(v) if k in keys else v.clone() for k, v in state.items()}


def test_equal_updates_measure_zero_and_other_updates_do_not(init):
    path, state = init
    a = moved(state, 0.1)
    assert cr.update_difference(a, {k: v.clone() for k, v in a.items()}, path) == 0.0
    assert cr.update_difference(moved(state, 0.2), a, path) == pytest.approx(1.0)  # twice the update


@pytest.mark.parametrize("which", ["first", "second"])
def test_a_run_that_did_not_move_is_refused(init, which):
    path, state = init
    still, trained = {k: v.clone() for k, v in state.items()}, moved(state, 0.1)
    a, b = (still, trained) if which == "first" else (trained, still)
    with pytest.raises(AssertionError, match=f"the {which} run's weights moved by 0 .* proves nothing"):
        cr.update_difference(a, b, path)
    with pytest.raises(AssertionError, match="proves nothing"):
        cr.update_difference(still, still, path)  # the initial weights against themselves


def test_a_tensor_one_run_left_unchanged_is_not_skipped(init):
    path, state = init
    b = moved(state, 0.1, keys=("w",))          # b's "b" did not move
    a = moved(state, 0.1)                       # a's did
    assert cr.update_difference(a, b, path) == float("inf")
    assert cr.update_difference(moved(state, 0.1, keys=("w",)), b, path) == 0.0
