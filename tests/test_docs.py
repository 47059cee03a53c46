# Every code snippet in README.md and docs/*.md, checked so none can rot (issue 20: of 29 runnable snippets, 8
# ran as written). Python blocks are complete programs: each runs in its own process, in an empty directory,
# against a replay server over the bundled fixtures (ANTHROPIC_BASE_URL; ANTHROPIC_BEDROCK_BASE_URL and fake AWS
# credentials for Bedrock), and must exit 0. Shell blocks are checked command by command: every `mendstream`
# command line parses with the CLI's own parser, every script or example they run exists, every extra they
# install is declared, every `module:attr` they name imports. And every `mendstream.x.y` the prose names exists.
#
# Markers, on the first lines of a block, visible in the rendered docs:
#   # partial: WHY        a deliberate fragment: only compiled (it must still be valid Python)
#   # requires: MODULE    run only where MODULE imports (an optional framework); "anthropic<1" also works
from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
import tomllib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mendstream.testing import FIXTURES, ReplayServer

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
SHELLS = ("sh", "bash", "shell", "console")


@dataclass(frozen=True)
class Snippet:
    path: Path
    line: int
    lang: str
    code: str

    @property
    def id(self) -> str:
        """``docs/x.md:LINE``, and ``-requires-MODULE`` for a snippet that needs an optional dependency (so
        ``-k requires-anthropic`` picks the ones to run under anthropic 0.x)."""
        requires = self.marker("requires")
        suffix = "-requires-" + re.sub(r"[^A-Za-z0-9]+", "-", requires.split(" ", 1)[0]).strip("-") if requires else ""
        return f"{self.path.relative_to(ROOT)}:{self.line}{suffix}"

    def marker(self, name: str) -> str | None:
        """The text after ``# name:`` on the block's leading comment lines, or None."""
        for line in self.code.splitlines():
            if not line.startswith("#"):
                break
            if line.startswith(f"# {name}:"):
                return line.split(":", 1)[1].strip()
        return None


def snippets() -> list[Snippet]:
    found = []
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(Snippet(path, line, match.group(1).lower(), match.group(2)))
    return found


ALL = snippets()
PYTHON = [s for s in ALL if s.lang == "python"]
SHELL = [s for s in ALL if s.lang in SHELLS]


def test_the_snippets_are_found() -> None:
    # a guard against the extractor silently matching nothing (the counts only grow with the docs)
    assert len(PYTHON) >= 25 and len(SHELL) >= 6
    assert {s.path.name for s in PYTHON} >= {"README.md", "transports.md", "proxy.md", "resilience.md"}
    partial = [s.id for s in PYTHON if s.marker("partial") is not None]
    assert len(partial) <= 3, f"more than a few deliberately partial snippets: {partial}"
    for snippet in PYTHON:
        reason = snippet.marker("partial")
        assert reason != "", f"{snippet.id}: '# partial:' needs a reason"


# -- Python: complete programs, run ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[ReplayServer]:
    with ReplayServer(FIXTURES) as srv:
        yield srv


def requirement_missing(requirement: str) -> str | None:
    """Why ``requirement`` (``module`` or ``module<MAJOR``) is not met here, or None."""
    name, _, below = requirement.partition("<")
    try:
        module = importlib.import_module(name.strip())
    except ImportError:
        return f"{name.strip()} is not installed"
    if below:
        major = int(str(getattr(module, "__version__", "0")).split(".")[0])
        if major >= int(below):
            return f"{name.strip()} {module.__version__} is not < {below}"
    return None


@pytest.mark.parametrize("snippet", PYTHON, ids=[s.id for s in PYTHON])
def test_python_snippet_runs(snippet: Snippet, server: ReplayServer, tmp_path: Path) -> None:
    compile(snippet.code, snippet.id, "exec")  # every block, partial or not, is valid Python
    if snippet.marker("partial") is not None:
        return
    requires = snippet.marker("requires")
    if requires is not None:
        why = requirement_missing(requires.split(" ", 1)[0])
        if why is not None:
            pytest.skip(why)
    server.reset()
    server.selector.reset()
    program = tmp_path / "snippet.py"
    program.write_text(snippet.code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "AWS_"))}
    env.update({
        "ANTHROPIC_BASE_URL": server.base_url, "ANTHROPIC_API_KEY": "test",
        "ANTHROPIC_BEDROCK_BASE_URL": server.base_url, "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
        # a name that moved to its room (served with a DeprecationWarning) fails the snippet; other warnings
        # (a framework's own deprecations) are not the docs' business
        "PYTHONPATH": str(ROOT / "src"), "PYTHONWARNINGS": "ignore,error::DeprecationWarning:__main__",
    })
    result = subprocess.run([sys.executable, str(program)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, (
        f"{snippet.id} failed (exit {result.returncode}):\n{snippet.code}\n--- stdout\n{result.stdout[-2000:]}"
        f"\n--- stderr\n{result.stderr[-4000:]}")
    if re.search(r"Anthropic(Bedrock)?\((\)|http_client=)", snippet.code):  # a client configured from the environment
        assert server.requests, f"{snippet.id} made no request to the replay server"


# -- Shell: commands checked ------------------------------------------------------------------------------


def commands(code: str) -> list[list[str]]:
    """The simple commands of a shell snippet: lines joined at a trailing backslash, split at ``&&``, ``||``,
    ``;``, ``|`` and ``&``; comments and leading ``VAR=value`` assignments dropped."""
    out: list[list[str]] = []
    joined = re.sub(r"\\\n", " ", code)
    for line in joined.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars="&|;")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words: list[str] = []
        for token in lexer:
            if token and set(token) <= set("&|;"):
                if words:
                    out.append(words)
                words = []
                continue
            if not words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", token):
                continue  # an environment assignment before the command
            words.append(token)
        if words:
            out.append(words)
    return out


def extras() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(pyproject["project"]["optional-dependencies"])


def check_command(words: list[str], where: str) -> None:
    program = words[0].rsplit("/", 1)[-1]
    args = words[1:]
    if program.startswith("python") and args[:2] == ["-m", "mendstream"]:
        program, args = "mendstream", args[2:]
    if program == "mendstream":
        from mendstream.cli import build_parser

        try:
            build_parser().parse_args(args)
        except SystemExit as exc:
            raise AssertionError(f"{where}: `mendstream {' '.join(args)}` does not parse (exit {exc.code})") from None
    elif (program.startswith("python") and args and args[0].endswith(".py")) or (program in ("bash", "sh") and args):
        script = args[0]
        if "/" in script and not script.startswith(("/", "$")):
            assert (ROOT / script).exists(), f"{where}: {script} does not exist"
    elif program == "pip" or (program.startswith("python") and args[:2] == ["-m", "pip"]):
        for arg in args:
            found = re.search(r"\[([\w,-]+)\]$", arg)
            if found:
                unknown = set(found.group(1).split(",")) - extras()
                assert not unknown, f"{where}: `{arg}` names extras that do not exist: {unknown}"
    elif program == "uvicorn":
        target = next((a for a in args if ":" in a and not a.startswith("-")), None)
        if target is not None:
            module, attr = target.split(":")
            assert hasattr(importlib.import_module(module), attr), f"{where}: {target} does not exist"


@pytest.mark.parametrize("snippet", SHELL, ids=[s.id for s in SHELL])
def test_shell_snippet_names_real_commands(snippet: Snippet) -> None:
    found = commands(snippet.code)
    assert found, f"{snippet.id}: no command"
    for words in found:
        check_command(words, snippet.id)


def test_the_shell_checks_catch_rot() -> None:
    """The checker itself: a renamed option, a missing script, an unknown extra and a moved module fail."""
    for bad in ("mendstream serve --no-such-option", ".venv/bin/python examples/no_such.py",
                "pip install -e '.[no_such_extra]'", "uvicorn --factory mendstream.proxy:app_from_env",
                "X=1 .venv/bin/python -m mendstream replay"):
        with pytest.raises((AssertionError, ImportError)):
            for words in commands(bad):
                check_command(words, "test")
    assert commands("A=1 B=2 mendstream serve --port 0 &  # comment\nfoo | bar && baz \\\n  --x") == [
        ["mendstream", "serve", "--port", "0"], ["foo"], ["bar"], ["baz", "--x"]]


# -- names in the prose ------------------------------------------------------------------------------------

DOTTED = re.compile(r"\b(mendstream(?:\.[A-Za-z_]\w*)+)(?::([A-Za-z_]\w*))?")
PROSE = [*DOCUMENTS, ROOT / "examples" / "README.md", FIXTURES / "README.md"]


def resolves(name: str, attr: str | None) -> bool:
    """True when ``name`` (``module.attr...``, ``:attr``) exists where the docs say, and not merely as a
    deprecated alias of a name that moved to its room."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            for part in [*parts[k:], *([attr] if attr else [])]:
                try:
                    obj = getattr(obj, part)
                except (AttributeError, DeprecationWarning):
                    return False
        return True
    return False


def test_every_name_the_docs_mention_exists() -> None:
    """`mendstream.testing.faults.FaultPlan`, `mendstream.wire.proxy:create_app`, ...: a module moved or a name
    renamed makes this fail until the docs follow."""
    missing = []
    for path in PROSE:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in DOTTED.finditer(line):
                if not resolves(match.group(1), match.group(2)):
                    missing.append(f"{path.relative_to(ROOT)}:{number}: {match.group(0)}")
    assert not missing, "names the docs mention that do not exist:\n" + "\n".join(missing)
    assert not resolves("mendstream.faults", None) and resolves("mendstream.testing.faults", "describe_fault")
    assert not resolves("mendstream.Attempt", None) and resolves("mendstream.streaming.retry.Attempt", None)
