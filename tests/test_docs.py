"""README.md and docs/ stay true to the code: every command names real flags, every relative link,
repository path and dotted name of our code exists, every docs page is reachable from README.

The flags are checked against each command's own argparse parser, captured as the command builds
it: ``argparse.ArgumentParser.parse_args`` is replaced by a stub that stops the command before it
parses, so nothing runs (no training, no Ray, no data).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import re
import shlex
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"

#: ``python -m <module>`` whose entry point is not ``<module>.main``: a package's ``__main__``
#: calls this module's ``main`` (importing ``__main__`` itself would run the command).
ENTRY_POINTS = {"khar_mmsa": "khar_mmsa.cli"}
#: The modules whose commands the docs may show (``python -m khar_mmsa...`` and
#: ``python -m benchmarks...``); other ``python -m`` commands (pytest, pip) are not ours to check.
CHECKED_PACKAGES = ("khar_mmsa", "benchmarks")

_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"\[(?:[^\]]|\][^(])*?\]\(([^)\s]+)\)")
_COMMAND = re.compile(r"python -m ((?:%s)[\w.]*)(?=\s|$)(.*)" % "|".join(CHECKED_PACKAGES))
_DOTTED = re.compile(r"((?:%s)(?:\.\w+)+)(?:\(.*\))?" % "|".join(CHECKED_PACKAGES))
#: Characters that mark a placeholder, not a real path: ``runs/demo/run-<n>``, ``khar_mmsa/**/*.py``.
_PLACEHOLDER = set("<>*…{}$~[]")


def doc_files() -> List[Path]:
    return [README] + sorted(DOCS.glob("*.md"))


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


# ---- what the documents say ---------------------------------------------------------------------
def _prose(text: str) -> str:
    """The text outside fenced code blocks, each paragraph on one line (a code span or a link may
    run over a line break)."""
    return re.sub(r"\n(?!\n)", " ", _FENCE.sub("", text))


def commands(text: str) -> Iterator[Tuple[str, List[str]]]:
    """``(module, argv)`` of every ``python -m khar_mmsa...`` / ``python -m benchmarks...`` in fenced
    blocks (continuation lines joined, ``# comments`` dropped) and in inline code spans."""
    lines: List[str] = []
    for block in _FENCE.findall(text):
        lines.extend(block.replace("\\\n", " ").splitlines())
    lines.extend(_CODE_SPAN.findall(_prose(text)))
    for line in lines:
        for match in _COMMAND.finditer(line):
            module, rest = match.group(1), match.group(2)
            rest = re.split(r"\s#", rest, maxsplit=1)[0]          # a trailing shell comment
            rest = re.split(r"python -m ", rest, maxsplit=1)[0]   # the next command on the line
            yield module, shlex.split(rest.replace("…", ""))


def links(text: str) -> Iterator[str]:
    """Every Markdown link target outside code."""
    yield from _LINK.findall(_CODE_SPAN.sub("", _prose(text)))


def repository_paths(text: str) -> Iterator[str]:
    """Repository paths in inline code spans: ``khar_mmsa/demo.py``, ``benchmarks/README.md``.

    A span counts when it has no spaces and no placeholder characters, holds a ``/``, does not
    start at ``/`` or ``..``, and either begins with a top-level entry of the repository or names a
    ``.py`` / ``.md`` file (so a misspelt top folder is caught too)."""
    top = {p.name for p in ROOT.iterdir()}
    for span in _CODE_SPAN.findall(_prose(text)):
        span = span.split("::", 1)[0].rstrip(".,;:")
        if (" " in span or "/" not in span or span.startswith(("/", "..")) or "://" in span
                or _PLACEHOLDER & set(span)):
            continue
        if span.split("/", 1)[0] in top or span.endswith((".py", ".md")):
            yield span


def python_names(text: str) -> Iterator[str]:
    """Dotted names of our code in inline code spans: ``khar_mmsa.run(...)``,
    ``khar_mmsa.io.files.load_pickle(path, trusted=True)`` (a call's arguments dropped)."""
    for span in _CODE_SPAN.findall(_prose(text)):
        match = _DOTTED.fullmatch(span.strip())
        if match:
            yield match.group(1)


# ---- what the code has --------------------------------------------------------------------------
class _Captured(BaseException):
    """Raised by the stub ``parse_args``: carries the parser the command built and its argv."""

    def __init__(self, parser: argparse.ArgumentParser, argv: Sequence[str]):
        super().__init__()
        self.parser, self.argv = parser, list(argv)


def captured_parser(module: str, argv: Sequence[str], monkeypatch: pytest.MonkeyPatch
                    ) -> Tuple[argparse.ArgumentParser, List[str]]:
    """The parser ``python -m <module> <argv>`` parses its arguments with, and the arguments it is
    given (after the entry point's own handling: ``python -m khar_mmsa`` takes ``--traceback``
    away and sends ``tune``/``sweep`` to their parsers)."""
    def stub(self: argparse.ArgumentParser, args: Sequence[str] = None, namespace: object = None) -> None:
        raise _Captured(self, args or [])
    entry = importlib.import_module(ENTRY_POINTS.get(module, module))
    mmsa_logger = logging.getLogger("MMSA")
    level = mmsa_logger.level   # python -m khar_mmsa sets INFO; restored after
    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", stub)
        try:
            entry.main(list(argv))
        except _Captured as captured:
            return captured.parser, captured.argv
        finally:
            mmsa_logger.setLevel(level)
    raise AssertionError(f"python -m {module} did not parse its arguments with argparse")


def flags_of(parser: argparse.ArgumentParser) -> set:
    return set(parser._option_string_actions)  # every option string, -h/--help included


def unknown_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> List[str]:
    """The tokens of ``argv`` that look like options but are none of the parser's (exact names:
    argparse's prefix matching is not something a document should lean on)."""
    known = flags_of(parser)
    unknown = []
    for token in argv:
        if token == "--":
            break
        if not token.startswith("-") or re.fullmatch(r"-\d[\d.e+-]*", token):
            continue
        if token.split("=", 1)[0] not in known:
            unknown.append(token)
    return unknown


def resolves(name: str) -> bool:
    """Whether ``a.b.c`` is a module, or an attribute reached from the longest importable module."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and not module_name.startswith(exc.name):
                raise  # the module exists but needs something not installed: not a docs problem to hide
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def _anchors(path: Path) -> set:
    """GitHub's heading anchors of a Markdown file."""
    out = set()
    for line in _FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower().replace("`", "")
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def broken_link(source: Path, target: str, folder: Path) -> str:
    """'' when a relative link of ``source`` (in ``folder``) resolves -- the file, and the heading
    anchor when it names one -- else why not."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):   # http:, https:, mailto:
        return ""
    file_part, _, anchor = target.partition("#")
    path = (folder / file_part).resolve() if file_part else source
    if not path.exists():
        return f"{file_part}: no such file"
    if anchor and path.suffix == ".md" and anchor not in _anchors(path):
        return f"#{anchor}: no such heading in {path.name}"
    return ""


def check_document(path: Path, monkeypatch: pytest.MonkeyPatch, folder: Path = None) -> List[str]:
    """Every problem of one document, one line each; relative links resolve from ``folder``
    (default: the document's own)."""
    text = path.read_text(encoding="utf-8")
    problems = []
    for module, argv in commands(text):
        parser, parsed = captured_parser(module, argv, monkeypatch)
        for flag in unknown_flags(parser, parsed):
            prog = parser.prog if parser.prog.startswith("python -m") else f"python -m {module}"
            problems.append(f"{_rel(path)}: `python -m {module} {' '.join(argv)}`: {flag} is not a flag "
                            f"of {prog}")
    for target in links(text):
        why = broken_link(path, target, folder or path.parent)
        if why:
            problems.append(f"{_rel(path)}: link ({target}): {why}")
    for name in python_names(text):
        if not resolves(name):
            problems.append(f"{_rel(path)}: `{name}`: no such module or name in the code")
    for span in repository_paths(text):
        if not (ROOT / span).exists():
            problems.append(f"{_rel(path)}: `{span}`: no such file or folder in the repository")
    return problems


# ---- the tests ----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", doc_files(), ids=_rel)
def test_commands_flags_links_and_paths_are_real(path: Path, monkeypatch: pytest.MonkeyPatch):
    assert check_document(path, monkeypatch) == []


def test_the_documents_show_commands_of_each_kind():
    """The checks above have something to check: commands of the CLI, its subcommands, the demo and
    the benchmarks, and repository paths."""
    found = {(m, argv[0] if argv and not argv[0].startswith("-") else "") for p in doc_files()
             for m, argv in commands(p.read_text(encoding="utf-8"))}
    for expected in [("khar_mmsa", ""), ("khar_mmsa", "tune"), ("khar_mmsa", "sweep"), ("khar_mmsa.demo", "")]:
        assert expected in found, expected
    assert any(m.startswith("benchmarks.") for m, _ in found)
    assert sum(1 for p in doc_files() for _ in repository_paths(p.read_text(encoding="utf-8"))) > 20
    assert sum(1 for p in doc_files() for _ in python_names(p.read_text(encoding="utf-8"))) > 10


def test_every_docs_page_is_linked_from_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README.read_text(encoding="utf-8"))}
    missing = [_rel(p) for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"docs pages README does not link: {missing}"


# ---- the checks catch what they are for ---------------------------------------------------------
def test_a_made_up_flag_is_caught(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    doc = tmp_path / "page.md"
    doc.write_text("```bash\npython -m khar_mmsa -m khar -d mosi --threads 1 --made-up 3\n"
                   "python -m khar_mmsa tune -m khar -d mosi --samples 4 --sample 4 --traceback\n```\n"
                   "and `python -m benchmarks.walk --quick --no-such-flag`\n")
    problems = check_document(doc, monkeypatch)
    flagged = [re.search(r": (\S+) is not a flag of (.*)$", p).groups() for p in problems]
    assert flagged == [("--made-up", "python -m khar_mmsa"),
                       ("--sample", "python -m khar_mmsa tune"),   # a prefix of --samples is not enough
                       ("--no-such-flag", "python -m benchmarks.walk")], problems


def test_a_broken_link_or_path_is_caught(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    doc = tmp_path / "page.md"   # its links resolve from docs/, as a page there would
    doc.write_text("[ok](usage.md) [gone](no-such-page.md) [anchor](usage.md#no-such-heading) "
                   "[fine](../README.md#khar-mmsa)\n`khar_mmsa/no_such_module.py` `khar_mmsa/demo.py` "
                   "`benchmark/README.md` `runs/demo/run-<n>`\n`khar_mmsa.io.pickles.load_pickle(path)` "
                   "`khar_mmsa.io.files.no_such_loader(path)` `khar_mmsa.no_such_module`\n")
    problems = "\n".join(check_document(doc, monkeypatch, folder=DOCS))
    assert "no-such-page.md: no such file" in problems
    assert "#no-such-heading: no such heading" in problems
    assert "khar_mmsa/no_such_module.py" in problems and "benchmark/README.md" in problems
    assert "(usage.md)" not in problems and "khar-mmsa" not in problems
    assert "khar_mmsa/demo.py" not in problems and "run-<n>" not in problems
    assert "`khar_mmsa.io.files.no_such_loader`: no such module or name" in problems
    assert "`khar_mmsa.no_such_module`: no such module or name" in problems
    assert "load_pickle" not in problems
