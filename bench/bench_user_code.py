"""What shipping the user's code costs: a local 2-node pool whose function lives in a ~5 MB local
package (shipped through the job's py_modules) against one whose function ships nothing.

Each pool runs in a fresh driver subprocess (so sys.modules holds the package only where it is
meant to), rounds alternate between the two. Printed per kind: pool entry (Ray uploads the package
while connecting), the first call (a worker sets the package up: download from the GCS, unzip),
and the median of later calls; then the ratios (package / none).

    .venv/bin/python bench/bench_user_code.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE_MB = 5

CHILD = r'''
import json, os, statistics, sys, time
import skyward_ray as sky

KIND = sys.argv[1]
if KIND == "package":
    import payload
    call = payload.work
else:
    @sky.function
    def work(x: int) -> int:
        return x + 1
    call = work

t0 = time.perf_counter()
with sky.Compute(nodes=2) as pool:
    entered = time.perf_counter() - t0
    t1 = time.perf_counter()
    assert call(1) >> pool == 2
    first = time.perf_counter() - t1
    later = []
    for i in range(60):
        t = time.perf_counter()
        call(i) >> pool
        later.append(time.perf_counter() - t)
    shipped = list(pool._code_modules)
print("BENCH " + json.dumps({"entry_s": entered, "first_s": first, "median_ms": statistics.median(later) * 1000,
                             "shipped": [os.path.basename(p) for p in shipped]}), flush=True)
'''


def write_package(root: Path) -> Path:
    """`payload/`: a function plus ~5 MB of code-like data (a generated module and a data file)."""
    package = root / "payload"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "import skyward_ray as sky\nfrom payload import table\n\n"
        "@sky.function\ndef work(x: int) -> int:\n    return x + table.ONE\n")
    rows = [f"V{i} = {i!r}  # generated constant padding the module\n" for i in range(40_000)]
    (package / "table.py").write_text("ONE = 1\n" + "".join(rows))
    have = sum(p.stat().st_size for p in package.rglob("*") if p.is_file())
    (package / "blob.bin").write_bytes(os.urandom(max(0, PACKAGE_MB * 1024 * 1024 - have)))
    return root


def run_one(kind: str, code_dir: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{code_dir}", "SKYWARD_QUIET": "1",
           "RAY_USAGE_STATS_ENABLED": "0"}
    with tempfile.TemporaryDirectory() as cwd:
        out = subprocess.run([sys.executable, "-c", CHILD, kind], env=env, cwd=cwd, capture_output=True,
                             text=True, timeout=300)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[6:])
    raise RuntimeError(f"{kind} run failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def staging_ms(code_dir: Path) -> float:
    """Finding and staging the package here, before any pool: `user_code.collect` + `stage`."""
    sys.path.insert(0, str(code_dir))
    try:
        import payload  # noqa: F401
        import skyward_ray as sky
        from skyward_ray.api import user_code

        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as stage:
            user_code.collect(sky.Image()).stage(Path(stage))
            return (time.perf_counter() - t0) * 1000
    finally:
        sys.path.remove(str(code_dir))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        code_dir = write_package(Path(tmp))
        size = sum(p.stat().st_size for p in (code_dir / "payload").rglob("*") if p.is_file()) / 1024**2
        results: dict[str, list[dict]] = {"none": [], "package": []}
        for _ in range(args.rounds):
            for kind in ("none", "package"):
                results[kind].append(run_one(kind, code_dir))
        staged = staging_ms(code_dir)
    print(f"package: {size:.1f} MiB, found and staged in {staged:.0f} ms; rounds: {args.rounds}")
    for kind, runs in results.items():
        print(f"{kind:8s} shipped={runs[0]['shipped']} " + "  ".join(
            f"entry {r['entry_s']:.2f}s first {r['first_s'] * 1000:.0f}ms later {r['median_ms']:.2f}ms" for r in runs))
    for measure, unit in (("entry_s", "entry"), ("first_s", "first call"), ("median_ms", "later calls (median)")):
        ratios = [p[measure] / n[measure] for p, n in zip(results["package"], results["none"])]
        print(f"ratio package/none, {unit}: " + ", ".join(f"{r:.2f}" for r in ratios)
              + f" (median {statistics.median(ratios):.2f})")


if __name__ == "__main__":
    main()
