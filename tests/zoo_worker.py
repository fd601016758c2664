"""Loads zoo models saved by tests/test_zoo.py in a new process and takes
their next training steps, for the save-and-load check.

    KERAS_BACKEND=jax python tests/zoo_worker.py JOBS.json RESULT.json

JOBS.json is a list of `{"case", "model", "path", "seed", "steps"}`: each
`.keras` file at `path` is loaded (nothing of the saving process is
shared but the file), compiled with XLA as the original was, and trained
`steps` times on the zoo batch of `model` drawn with `seed`. RESULT.json
maps each case to the losses of those steps.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
from zoo import models  # noqa: E402  (registers the zoo's custom classes)

import keras_mtl  # noqa: E402, F401  (registers MultiTaskModel)


def main(jobs_path: str, result_path: str) -> None:
    with open(jobs_path) as f:
        jobs = json.load(f)
    result = {}
    for job in jobs:
        model = keras.models.load_model(job["path"])
        # The compile config does not hold `jit_compile`; the original ran
        # its steps under XLA.
        model.jit_compile = True
        x, y = models.MODELS[job["model"]].data(models.BATCH, job["seed"])
        result[job["case"]] = [
            float(model.train_on_batch(x, y, return_dict=True)["loss"])
            for _ in range(job["steps"])
        ]
    with open(result_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:3])
