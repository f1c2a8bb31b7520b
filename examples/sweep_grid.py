"""A grid search, one trial per task, on a 2-node pool on this machine: an SVM's C and gamma on
scikit-learn's bundled handwritten-digits dataset (shipped inside the package: nothing is
downloaded). Trials are printed as they finish, with the best so far; a failing trial is reported
and the sweep goes on.

Run:  pip install -e '.[examples]' && python examples/sweep_grid.py     (no cloud account needed)
"""

from __future__ import annotations

import itertools

import skyward_ray as sky

GRID = [{"C": c, "gamma": g} for c, g in itertools.product([0.1, 1.0, 10.0, 100.0], [1e-4, 1e-3, 1e-2])]


@sky.function(timeout=300)
def train(config: dict) -> dict:
    """3-fold cross-validated accuracy of an RBF SVM with this config, on the 1,797 8×8 digit images."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import cross_val_score
    from sklearn.svm import SVC

    if config["C"] <= 0:
        raise ValueError(f"C must be positive, got {config['C']}")
    features, labels = load_digits(return_X_y=True)
    scores = cross_val_score(SVC(C=config["C"], gamma=config["gamma"]), features / 16.0, labels, cv=3)
    return {"accuracy": float(scores.mean()), "node": sky.instance_info().node}


def main(grid: list[dict] | None = None, nodes: int = 2) -> sky.Compute:
    grid = GRID if grid is None else grid
    with sky.Compute(nodes=nodes) as pool:
        sweep = pool.sweep(train, grid, score="accuracy", mode="max", progress=False)
        for trial in sweep:
            if trial.ok:
                print(f"{trial.item} → accuracy {trial.value['accuracy']:.4f} on node {trial.value['node']} "
                      f"(best so far {sweep.best.value['accuracy']:.4f})")
            else:
                print(f"{trial.item} failed: {type(trial.error).__name__}: {trial.error}")
    best = sweep.best
    print(f"best: C={best.item['C']}, gamma={best.item['gamma']}: accuracy {best.value['accuracy']:.4f} "
          f"({len(sweep.trials)} trials, {len(sweep.failed)} failed)")
    return sweep


if __name__ == "__main__":
    main()
