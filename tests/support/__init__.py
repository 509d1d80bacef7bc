"""Helpers that test files of both layers import by name (`from support.<topic> import ...`):
builders, data writers and objective modules that more than one test file uses, or that a unit
file and its e2e half (tests/unit/test_X.py, tests/e2e/test_X_e2e.py) share. They live here, not
in a test module, so that no test module imports another's tests and each layer runs on its own
(pyproject's `pytest pythonpath = ["tests"]` puts tests/ on the path; fixtures stay in conftest)."""
