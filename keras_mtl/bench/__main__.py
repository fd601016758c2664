"""`python -m keras_mtl.bench [options]`: the same as `keras-mtl bench [options]`."""

import sys

from keras_mtl.bench.cli import bench

raise SystemExit(bench(sys.argv[1:]))
