"""The rule that keeps the folder and the `slow` marker in agreement (`conftest.layer_problem`,
applied at collection): both kinds of violation are caught, a test outside both folders too, and a
clean set passes."""

from pathlib import PurePosixPath

from conftest import layer_problem


def problems(tests: list[tuple[str, bool]]) -> list[str]:
    return [f"{path} {why}" for path, slow in tests if (why := layer_problem(PurePosixPath(path), slow))]


def test_a_clean_set_passes():
    assert problems([("unit/test_space.py", False), ("e2e/test_cli_run.py", True), ("e2e/sub/test_x.py", True)]) == []


def test_an_unmarked_e2e_test_and_a_slow_unit_test_are_both_caught():
    found = problems([("unit/test_space.py", False), ("e2e/test_cli_run.py", False), ("unit/test_models.py", True),
                      ("e2e/test_workers.py", True)])
    assert len(found) == 2
    assert found[0].startswith("e2e/test_cli_run.py ") and "not marked slow" in found[0]
    assert found[1].startswith("unit/test_models.py ") and "marked slow but lies under tests/unit" in found[1]


def test_a_test_file_outside_both_folders_has_no_layer():
    for slow in (False, True):
        assert "outside tests/unit and tests/e2e" in layer_problem(PurePosixPath("test_space.py"), slow)
        assert "outside" in layer_problem(PurePosixPath("other/test_space.py"), slow)
