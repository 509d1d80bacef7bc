"""The docs a newcomer walks stay true to the tool: every `python -m study ...` line they show parses
with the CLI's own argparse parser, every relative link points at a file, README.md stays short, and
every shown output names the script that produces it.

Parsing only: nothing runs. The one filesystem check argparse makes (`--data` must be an existing
folder) is swapped for plain text here, as the docs' examples name folders of the reader's machine
(`/data/dr`).
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from study.cli import build_parser
from study.cli.common import existing_dir

from conftest import ROOT

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
SCRIPT = ROOT / "docs" / "shown_outputs.sh"
README_LIMIT = 12_500  # bytes: the README is the tour; the rest lives in docs/
COMMAND = "python -m study"
STARTS = re.compile(r"python -m study(?= |$)")  # not `python -m study.run.worker`, nor `python -m study`'s own name
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`([^`]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target) and ![alt](target), the alt possibly on an earlier line


@dataclass(frozen=True)
class Line:
    path: Path
    number: int
    text: str
    in_code_block: bool

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.number}"


def lines(path: Path) -> Iterator[Line]:
    """Every line of a Markdown file, knowing whether it sits inside a fenced code block."""
    inside = False
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if FENCE.match(text):
            inside = not inside
            continue
        yield Line(path, number, text, inside)


def commands(path: Path) -> Iterator[tuple[Line, str]]:
    """`python -m study ...` as a code block's line shows it (after a `$ ` prompt or `VAR=value`
    prefixes, continued over trailing backslashes), and the inline code spans that start with it."""
    pending: list[str] = []
    start: Line | None = None
    usage_head = ""  # `python -m study run NAME` of the usage line above, which a `[--flag ...]` line continues
    for line in lines(path):
        if line.in_code_block:
            if pending:
                pending.append(line.text)
            elif (found := STARTS.search(line.text)) and not line.text.lstrip().startswith("#"):
                start, pending = line, [line.text[found.start():]]
            elif usage_head and line.text.lstrip().startswith("["):
                yield line, f"{usage_head} {line.text.strip()}"
                continue
            else:
                usage_head = ""
            if pending and pending[-1].endswith("\\"):
                pending[-1] = pending[-1][:-1]
                continue
            if pending:
                assert start is not None
                command, pending = " ".join(pending), []
                usage_head = command.split("[")[0].strip() if is_synopsis(command) else ""
                yield start, command
        else:
            usage_head = ""
            for span in INLINE_CODE.findall(line.text):
                if STARTS.match(span):
                    yield line, span


def is_synopsis(command: str) -> bool:
    """A usage line (`run NAME [--data DIR] ...`, `report | ablate | dashboard NAME ...`), not a command."""
    return "[" in command or " | " in command or "..." in command


def docs_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    for sub in subparsers(parser):
        for action in sub._actions:
            if action.type is existing_dir:
                action.type = str
    return parser


def subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from subparsers(sub)


def words(command: str) -> list[str]:
    """The arguments after `python -m study`, up to a shell operator; `# comments` dropped."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    argv: list[str] = []
    for token in list(lexer)[3:]:
        if token in {"&&", "||", "|", ";", "&"}:
            break
        argv.append(token)
    return argv


def synopsis_problem(parser: argparse.ArgumentParser, command: str) -> str | None:
    """A usage line must name commands that exist and options each command has."""
    first = command[len(COMMAND):].split("[")[0].split()
    names = [w for w in first if w != "|"]
    sub = parser
    choices = next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if " | " in command:  # several commands in one line: each must exist
        unknown = [n for n in names if n.islower() and n.isalpha() and n not in choices]
        return f"unknown command(s) {unknown}" if unknown else None
    for name in names:
        nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        if not nested:
            break
        if name not in nested[0].choices:
            return f"unknown command {name!r}"
        sub = nested[0].choices[name]
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", command))
    unknown_flags = sorted(flags - set(sub._option_string_actions))
    return f"options {unknown_flags} are not options of {sub.prog!r}" if unknown_flags else None


def all_commands() -> list[tuple[Line, str]]:
    return [found for path in PAGES for found in commands(path)]


def test_the_docs_show_commands_at_all():
    found = all_commands()
    where = {line.path.name for line, _ in found}
    assert len(found) >= 20 and {"README.md", "running.md", "many-machines.md"} <= where, where


def test_every_study_command_in_the_docs_parses():
    parser = docs_parser()
    problems = []
    for line, command in all_commands():
        if is_synopsis(command):
            problem = synopsis_problem(parser, command)
        else:
            try:
                parser.parse_args(words(command))
                problem = None
            except (Exception, SystemExit) as exc:  # UsageError is the CLI's one-line usage error
                problem = f"{type(exc).__name__}: {exc}"
        if problem:
            problems.append(f"{line.where()}: {command!r}: {problem}")
    assert not problems, "\n".join(problems)


def test_a_command_that_does_not_parse_is_reported_with_file_and_line(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n```\n$ python -m study run dr_focal --trials 0\npython -m study frobnicate x\n"
                    "python -m study run NAME [--data DIR]\n    [--no-such-flag]\n```\n")
    parser = docs_parser()
    found = list(commands(page))
    assert [(line.number, command) for line, command in found] == [
        (4, "python -m study run dr_focal --trials 0"), (5, "python -m study frobnicate x"),
        (6, "python -m study run NAME [--data DIR]"), (7, "python -m study run NAME [--no-such-flag]")]
    assert synopsis_problem(parser, found[3][1]) == "options ['--no-such-flag'] are not options of 'study run'"
    for _, command in found[:2]:
        with pytest.raises(Exception):
            parser.parse_args(words(command))
    assert synopsis_problem(parser, "python -m study run NAME [--no-such-flag]") is not None
    assert synopsis_problem(parser, "python -m study run NAME [--data DIR] [--trials N]") is None
    assert synopsis_problem(parser, "python -m study data inspect DIR [--layout dr_lab|kaggle]") is None


def test_readme_is_short():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size:,} bytes (at most {README_LIMIT:,}): move reference text to docs/"


def links(path: Path) -> Iterator[tuple[Line, str]]:
    for line in lines(path):
        if not line.in_code_block:
            for target in LINK.findall(INLINE_CODE.sub("", line.text)):
                yield line, target


def test_every_relative_link_points_at_a_file():
    broken, checked = [], 0
    for path in PAGES:
        for line, target in links(path):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL, or an anchor within the page
            checked += 1
            if not (path.parent / target.split("#")[0]).exists():
                broken.append(f"{line.where()}: {target}")
    assert checked >= 20
    assert not broken, "broken relative links:\n" + "\n".join(broken)


def test_every_shown_output_names_the_script_that_runs_it():
    """A block that starts with `$ python -m study ...` shows what the command printed: the line after
    it names docs/shown_outputs.sh, and that script runs the command."""
    script = SCRIPT.read_text(encoding="utf-8")
    missing, shown = [], 0
    for path in PAGES:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"```\n\$ (python -m study[^\n]*)\n.*?```\n+([^\n]*)", text, flags=re.S):
            shown += 1
            number = text[:match.start()].count("\n") + 2
            if "docs/shown_outputs.sh" not in match.group(2) or match.group(1) not in script:
                missing.append(f"{path.relative_to(ROOT)}:{number}: {match.group(1)}")
    assert shown >= 3
    assert not missing, "shown outputs without their script:\n" + "\n".join(missing)
