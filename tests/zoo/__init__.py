"""The conformance zoo: tiny, offline models of the kinds users bring
(tests/zoo/models.py), exercised by tests/test_zoo.py."""
