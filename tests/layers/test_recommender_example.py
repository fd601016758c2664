"""examples/recommender_mmoe.py runs end to end on a tiny generated data set."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.backend_neutral

ROOT = Path(__file__).resolve().parents[2]


def test_recommender_mmoe():
    spec = importlib.util.spec_from_file_location(
        "example_recommender_mmoe", ROOT / "examples" / "recommender_mmoe.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(
        ["--num-examples", "320", "--epochs", "1", "--batch-size", "64"]
    )
    assert set(result["scores"]) == {"shared_bottom", "mmoe"}
    for row in result["scores"].values():
        assert set(row) == {"click", "conversion"}
        assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in row.values())
    (weights,) = result["gate_utilization"].values()
    assert weights.shape == (2, 4)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
