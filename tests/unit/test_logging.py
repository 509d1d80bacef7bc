"""The CLI's messages through one `study` logger (`study.log`): -q and -v on every command, the
default output as it always was, results on stdout whatever the verbosity."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from study import cli, log, records
from study.cli.common import verbosity_of
from study.run.output import Output

from conftest import ROOT

WARNING = "study: warning: the study's recorded report endpoints are unreadable; none are reported\n"


def commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every (sub)command's shortest command line: its words, then a value for each positional."""
    found: list[tuple[str, ...]] = []
    positionals: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += commands(sub, (*prefix, name))
            return found
        if not action.option_strings:
            positionals.append("x")
    return [(*prefix, *positionals)]


def test_every_command_takes_q_and_v_before_or_after_its_arguments():
    parser = cli.build_parser()
    lines = commands(parser)
    assert {line[0] for line in lines} == set(cli.COMMANDS) and ("data", "inspect", "x") in lines
    for line in lines:
        assert verbosity_of(parser.parse_args(line)) == log.NORMAL
        for flag, expected in (("-q", log.QUIET), ("--quiet", log.QUIET), ("-v", log.VERBOSE),
                               ("--verbose", log.VERBOSE)):
            assert verbosity_of(parser.parse_args([*line, flag])) == expected, (line, flag)
            assert verbosity_of(parser.parse_args([flag, *line])) == expected, (line, flag)


def test_q_and_v_together_are_a_one_line_usage_error(capsys):
    assert cli.main(["list", "-q", "-v"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not allowed with argument" in err


def damaged_endpoints_storage(tmp_path: Path) -> list[str]:
    """A storage whose one study recorded unreadable report endpoints: `list` reads its record and
    warns once (a Python warning of `study.spaces.report_layout`, shown through the logger)."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="damaged", storage=url, direction="maximize")
    study.set_user_attr(records.REPORT, {"endpoints": ["referable"]})
    return ["list", "--storage", url, "--results", str(tmp_path)]


@pytest.mark.parametrize("flag", [None, "-q", "-v"])
def test_a_warning_is_one_line_by_default_silenced_by_q_and_v_adds_debug_lines(tmp_path, capsys, flag):
    argv = damaged_endpoints_storage(tmp_path)
    capsys.readouterr()
    assert cli.main(argv + ([flag] if flag else [])) == 0
    out, err = capsys.readouterr()
    assert "damaged" in out and out.startswith("storage: ")  # the table is a result: printed at every verbosity
    if flag is None:
        assert err == WARNING  # byte for byte what the CLI printed before it logged
    elif flag == "-q":
        assert err == ""
    else:
        lines = err.splitlines()
        assert WARNING.strip() in lines
        assert f"study: debug: list: Python {sys.version.split()[0]}, Optuna {optuna.__version__}" in lines
        assert f"study: debug: storage: sqlite:///{tmp_path / 'optuna.db'}" in lines
        assert all(line.startswith("study: ") for line in lines)


def test_a_command_leaves_the_verbosity_as_it_found_it(tmp_path, capsys):
    """`main` called in-process (a test, a notebook): -q ends with the command."""
    assert cli.main(["list", "-q", "--results", str(tmp_path), "--storage", f"sqlite:///{tmp_path / 'a.db'}"]) == 0
    Output().warn("after the command")
    assert capsys.readouterr().err == "study: warning: after the command\n"
    assert log.verbosity() == log.NORMAL


def test_v_shows_the_traceback_of_an_error_before_its_one_line(tmp_path, capsys):
    missing = tmp_path / "none.db"
    assert cli.main(["report", "s", "--storage", f"sqlite:///{missing}", "--results", str(tmp_path)]) == 2
    plain = capsys.readouterr().err
    assert plain == f"study: error: no storage at {missing}; run a study first\n"
    assert cli.main(["report", "s", "-v", "--storage", f"sqlite:///{missing}", "--results", str(tmp_path)]) == 2
    verbose = capsys.readouterr().err
    assert verbose.endswith(plain) and "Traceback (most recent call last)" in verbose
    assert "study: debug: what ended the command:" in verbose
    assert cli.main(["report", "s", "-q", "--storage", f"sqlite:///{missing}", "--results", str(tmp_path)]) == 2
    assert capsys.readouterr().err == plain  # -q never silences the error


def test_the_logger_writes_to_the_stderr_of_the_moment_and_a_library_user_can_take_the_records(capsys, caplog):
    logger = log.get_logger("study.some.module")
    assert logger.name == "study.some.module" and log.get_logger("x").name == "study.x"
    logger.warning("one %s", "line")
    logger.debug("not by default")
    assert capsys.readouterr().err == "study: warning: one line\n"
    log.hand_over()
    try:
        with caplog.at_level("WARNING", logger="study"):
            logger.warning("to the application's handlers")
        assert capsys.readouterr().err == "" and caplog.messages == ["to the application's handlers"]
    finally:
        log._install()


def test_dashboard_still_imports_no_torch():
    code = ("import sys; from study import cli; from study.cli import dashboard; "
            "import study.dashboard.server, study.dashboard.trial_pages, study.log; "
            "cli.build_parser().parse_args(['dashboard', 's', '-v']); assert 'torch' not in sys.modules, 'torch'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_run_workers_are_started_with_the_commands_verbosity(tmp_path):
    from study.run import workers

    with log.restored():
        log.configure(log.QUIET)
        assert workers.worker_command(tmp_path / "o.json", 0)[-1] == "-q"
        log.configure(log.VERBOSE)
        command = workers.worker_command(tmp_path / "o.json", 0)
    assert command[-1] == "-v" and workers.worker_command(tmp_path / "o.json", 0)[-1] == "0"
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 74 and "study: debug: what ended the command:" in done.stderr  # -v reached it
    assert done.stderr.splitlines()[-1].startswith("study: error: No such file or directory")


def test_a_damaged_file_warning_from_objectives_is_the_same_line_and_q_silences_it(tmp_path, capsys):
    """objectives cannot import study: `report_damaged` logs under study.objectives once the tool's
    handler is installed (this process imported study), so -q silences it like any warning."""
    from objectives.atomic import report_damaged

    with log.restored():
        report_damaged(tmp_path / "cache.npy", "truncated. more detail", "decoding the images again")
        assert capsys.readouterr().err == (f"study: warning: {tmp_path / 'cache.npy'} is damaged (truncated); "
                                           "decoding the images again\n")
        log.configure(log.QUIET)
        report_damaged(tmp_path / "cache.npy", "truncated", "decoding the images again")
        assert capsys.readouterr().err == ""
    code = ("import sys; from objectives.atomic import report_damaged; report_damaged('x', 'bad', 'again'); "
            "assert 'study' not in sys.modules")  # on their own, objectives print the same line
    alone = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           cwd=ROOT)
    assert alone.returncode == 0, alone.stderr
    assert alone.stderr == "study: warning: x is damaged (bad); again\n"
