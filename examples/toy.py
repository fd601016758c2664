"""Balancing methods on the 2-D two-objective toy problem (no data, no net).

The toy problem of CAGrad, Nash-MTL and FAMO: two losses of two parameters,
L1 scaled by 0.1 (a loss-scale imbalance), five start points and a known
Pareto front. Each method runs Adam from every start point; the table shows
the final (L1, L2) and the distance in loss space to the Pareto front. The
losses go negative: methods that assume non-negative losses (uncertainty,
gls) may diverge here.

    python examples/toy.py                                 # equal, dwa, adaptive
    python examples/toy.py --method equal --method bmtl:temperature=2 --plot
    python examples/toy.py --method mgda --method nash_mtl --method equal+cagrad
"""

import argparse
from pathlib import Path

import numpy as np

from keras_mtl.bench.toy import distance_to_front, optimise_path, plot_toy
from keras_mtl.datasets import load


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--method", action="append", help="repeatable; default: equal, dwa, adaptive"
    )
    parser.add_argument("--steps", type=int, default=5000, help="Adam steps per path")
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--plot", action="store_true", help="write toy_paths.png")
    parser.add_argument("--out", default="toy_example", help="where --plot writes")
    args = parser.parse_args(argv)
    methods = args.method or ["equal", "dwa", "adaptive"]

    problem = load("toy")  # a ToyProblem: losses(params), start_points, pareto_front
    front = problem.pareto_front(400)

    # One optimisation path per method and start point: params, losses, weights.
    paths = {
        method: [
            optimise_path(problem, method, start, args.steps, args.learning_rate)
            for start in problem.start_points
        ]
        for method in methods
    }

    results = {}
    print(f"\n{'method':<10} {'start':>14} {'L1':>8} {'L2':>8} {'to front':>9}")
    for method, runs in paths.items():
        finals = np.stack([run["losses"][-1] for run in runs])  # [starts, 2]
        distances = [distance_to_front(f, front) for f in finals]
        results[method] = {
            **{task: finals[:, i].tolist() for i, task in enumerate(problem.tasks)},
            "distance_to_front": distances,
        }
        for start, (l1, l2), d in zip(problem.start_points, finals, distances):
            point = f"({start[0]:.1f}, {start[1]:.1f})"
            print(f"{method:<10} {point:>14} {l1:8.3f} {l2:8.3f} {d:9.3f}")

    if args.plot:  # parameter-space and loss-space paths, one column per method
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        print(f"wrote {plot_toy(problem, paths, out)}")
    return results


if __name__ == "__main__":
    main()
