"""A Ray Tune sweep (Tuner + ASHA early stopping) on a 2-node pool on this machine. The Tune code
in `tune_digits` is plain Ray Tune: it knows nothing of skyward_ray and would run unchanged on
any Ray cluster. Data: scikit-learn's bundled handwritten-digits dataset (nothing is downloaded).

Run:  pip install -e '.[examples]' && python examples/sweep_tune.py     (no cloud account needed)
"""

from __future__ import annotations

import tempfile

from ray import tune
from ray.tune.schedulers import ASHAScheduler

import skyward_ray as sky


def train_digits(config: dict) -> None:
    """A linear classifier trained by SGD, one epoch per report, so ASHA can stop poor trials early."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.linear_model import SGDClassifier
    from sklearn.model_selection import train_test_split

    features, labels = load_digits(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(features / 16.0, labels, test_size=0.3, random_state=0)
    model = SGDClassifier(alpha=config["alpha"], learning_rate="constant", eta0=config["eta0"], random_state=0)
    for epoch in range(config["epochs"]):
        model.partial_fit(train_x, train_y, classes=np.unique(labels))
        tune.report({"accuracy": float(model.score(test_x, test_y)), "epoch": epoch + 1})


def tune_digits(num_samples: int = 8, epochs: int = 8) -> dict:
    """Plain Ray Tune: random search over alpha and eta0, ASHA stopping the worst trials early."""
    tuner = tune.Tuner(
        tune.with_resources(train_digits, {"cpu": 1}),
        param_space={"alpha": tune.loguniform(1e-6, 1e-2), "eta0": tune.loguniform(1e-3, 1.0), "epochs": epochs},
        tune_config=tune.TuneConfig(num_samples=num_samples, metric="accuracy", mode="max",
                                    scheduler=ASHAScheduler(max_t=epochs, grace_period=2)),
        run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(prefix="tune-"), name="digits", verbose=0),
    )
    best = tuner.fit().get_best_result()
    return {"accuracy": best.metrics["accuracy"], "epochs": best.metrics["epoch"], **best.config}


def main(num_samples: int = 8, epochs: int = 8, nodes: int = 2) -> dict:
    with sky.Compute(nodes=nodes):  # inside the block, Ray Tune runs on the pool
        best = tune_digits(num_samples, epochs)
    print(f"best: alpha={best['alpha']:.2e}, eta0={best['eta0']:.3f}: accuracy {best['accuracy']:.4f} "
          f"after {best['epochs']} epochs")
    return best


if __name__ == "__main__":
    main()
