"""The two sweep examples, trimmed, end to end on the pool each opens (the default local provider)."""

from __future__ import annotations

from examples import sweep_grid, sweep_tune


def test_the_grid_search_example_prints_the_best_configuration(capsys):
    sweep = sweep_grid.main(grid=[{"C": 10.0, "gamma": 1e-3}, {"C": 0.1, "gamma": 1e-4}, {"C": -1.0, "gamma": 1e-3}])
    out = capsys.readouterr().out
    assert sweep.best.item == {"C": 10.0, "gamma": 1e-3} and sweep.best.value["accuracy"] > 0.9
    assert "best: C=10.0, gamma=0.001: accuracy 0.9" in out and "(3 trials, 1 failed)" in out
    assert "C must be positive" in out


def test_the_tune_example_runs_plain_ray_tune_on_the_pool(capsys):
    best = sweep_tune.main(num_samples=3, epochs=3)
    assert 0.5 < best["accuracy"] <= 1.0 and 1 <= best["epochs"] <= 3
    assert "best: alpha=" in capsys.readouterr().out
