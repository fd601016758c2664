"""The benchmark: compare balancing methods on real multi-task data (`keras-mtl bench`)."""
