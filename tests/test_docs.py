"""The docs: README stays short, `docs/` builds with `mkdocs build --strict`, every relative link resolves, and
every block marked runnable (`<!-- runnable -->` on the line before a bash or python fence; docs/contributing.md)
is valid code whose `pocketformer` commands the CLI parser accepts. Each check also runs once on a broken sample,
so a checker that stopped finding anything would fail too. A few seconds in all."""
from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
MARKER = "<!-- runnable -->"
PAGES = sorted(DOCS.glob("*.md"))
SOURCES = [README, *PAGES]
FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")


@dataclass
class Block:
    where: str  # file:line of the opening fence
    lang: str
    code: str


def runnable_blocks(text: str, name: str) -> tuple[list[Block], list[str]]:
    """The blocks marked runnable, and the misplaced markers (not right before a bash or python fence). A marker
    inside a fenced block (an example of the marker, as on docs/contributing.md) is part of that block's text."""
    lines, blocks, problems = text.splitlines(), [], []
    i, fence = 0, None
    while i < len(lines):
        line, match = lines[i], FENCE.match(lines[i].strip())
        if fence:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) and not match.group(2):
                fence = None
        elif match:
            fence = match.group(1)
        elif line.strip() == MARKER:
            opening = FENCE.match(lines[i + 1].strip()) if i + 1 < len(lines) else None
            if not opening or opening.group(2) not in ("bash", "python"):
                problems.append(f"{name}:{i + 1}: {MARKER} is not right before a ```bash or ```python fence")
            else:
                end = next((j for j in range(i + 2, len(lines)) if lines[j].strip() == opening.group(1)), None)
                if end is None:
                    problems.append(f"{name}:{i + 2}: the runnable block is never closed")
                else:
                    blocks.append(Block(f"{name}:{i + 2}", opening.group(2), "\n".join(lines[i + 2:end]) + "\n"))
                    i = end
        i += 1
    return blocks, problems


def _all_blocks() -> list[Block]:
    blocks = []
    for path in SOURCES:
        found, _ = runnable_blocks(path.read_text(), str(path.relative_to(ROOT)))
        blocks += found
    return blocks


def _cli():
    import argparse

    from sdk.cli import build_parser

    parser, _ = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, set(subparsers.choices)


def pocketformer_commands(block: Block) -> list[list[str]]:
    """The argument lists of the `pocketformer` commands in a bash block (after `.venv/bin/` or any path; one per
    simple command, split on `&&`, `||`, `;`, `|`; continuation lines joined; comments dropped)."""
    commands = []
    for line in block.code.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token in ("&&", "||", ";", "|", "&"):
                if command and Path(command[0]).name == "pocketformer":
                    commands.append(command[1:])
                command = []
            else:
                command.append(token)
    return commands


def block_problems(block: Block, parser, commands: set[str]) -> list[str]:
    """Why a runnable block is not valid: a syntax error, or a `pocketformer` command the CLI does not have or
    whose arguments its parser refuses. Empty when it is valid."""
    problems = []
    if block.lang == "python":
        try:
            compile(block.code, block.where, "exec")
        except SyntaxError as e:
            problems.append(f"{block.where}: python does not compile: {e}")
        named = [[m] for m in re.findall(r"\bpocketformer\s+([a-z][\w-]*)", block.code)]
    else:
        done = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            problems.append(f"{block.where}: bash -n: {done.stderr.strip()}")
        named = pocketformer_commands(block)
    for argv in named:
        if not argv or argv[0] not in commands:
            problems.append(f"{block.where}: `pocketformer {' '.join(argv[:1])}` is no command of the CLI "
                            f"({', '.join(sorted(commands))})")
        elif block.lang == "bash":
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    parser.parse_args(argv)
            except SystemExit:
                problems.append(f"{block.where}: the CLI refuses `pocketformer {shlex.join(argv)}`: "
                                f"{err.getvalue().strip().splitlines()[-1:]}")
    return problems


# -- the site ---------------------------------------------------------------------------------------------------
def _mkdocs(config_dir: Path, site: Path) -> subprocess.CompletedProcess:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install -e '.[dev]' brings mkdocs-material")
    pytest.importorskip("material", reason="mkdocs-material is not installed: pip install -e '.[dev]' brings it")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=config_dir, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def test_mkdocs_build_strict_passes(tmp_path):
    done = _mkdocs(ROOT, tmp_path / "site")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").exists()
    built = {p.stem for p in PAGES}
    assert all((tmp_path / "site" / (stem if stem != "index" else "") / "index.html").exists() for stem in built)


def test_mkdocs_strict_fails_on_a_broken_link_an_anchor_or_a_page_left_out_of_nav(tmp_path):
    """The same config on a copy of docs/ with one fault each: --strict must refuse every one."""
    faults = {"link": ("index.md", "\n[gone](no-such-page.md)\n", "no-such-page.md"),
              "anchor": ("index.md", "\n[gone](formats.md#no-such-heading)\n", "no-such-heading"),
              "nav": ("orphan.md", "# Not in nav\n", "orphan.md")}
    for fault, (page, text, named) in faults.items():
        copy = tmp_path / fault
        shutil.copytree(DOCS, copy / "docs")
        shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
        with open(copy / "docs" / page, "a") as f:
            f.write(text)
        done = _mkdocs(copy, copy / "site")
        assert done.returncode != 0, f"mkdocs build --strict passed with a broken {fault}"
        assert named in done.stdout + done.stderr, done.stdout[-2000:] + done.stderr[-2000:]


def test_every_docs_page_is_in_nav():
    nav = set(re.findall(r":\s*([\w./-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M))
    assert nav == {p.name for p in PAGES}, f"in docs/ but not in nav: {sorted({p.name for p in PAGES} - nav)}; " \
                                           f"in nav but not in docs/: {sorted(nav - {p.name for p in PAGES})}"


def test_site_is_git_ignored():
    done = subprocess.run(["git", "check-ignore", "-q", "site/"], cwd=ROOT, capture_output=True)
    if done.returncode == 128:
        pytest.skip("not a git checkout")
    assert done.returncode == 0, "add site/ (mkdocs build's output) to .gitignore"


# -- links --------------------------------------------------------------------------------------------------------
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def broken_links(path: Path, text: str) -> list[str]:
    """Relative links (outside code) in a Markdown file whose target file does not exist."""
    prose = re.sub(r"(`{3,}|~{3,}).*?^\s*\1", "", text, flags=re.S | re.M)  # fenced blocks
    prose = re.sub(r"`[^`\n]*`", "", prose)                                   # inline code
    broken = []
    for target in LINK.findall(prose):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # http(s), mailto; an anchor on the same page (mkdocs checks anchors)
        file = target.split("#", 1)[0]
        if not (path.parent / file).exists():
            broken.append(f"{path.relative_to(ROOT)}: {target}")
    return broken


def test_every_relative_link_points_to_an_existing_file():
    broken = [b for path in SOURCES for b in broken_links(path, path.read_text())]
    assert not broken, broken
    assert broken_links(README, "[x](docs/no-such.md) `[y](z.md)`") == ["README.md: docs/no-such.md"]


def test_readme_links_to_every_docs_page():
    linked = {Path(t.split("#")[0]).name for t in LINK.findall(README.read_text()) if t.startswith("docs/")}
    assert {p.name for p in PAGES} - {"index.md"} <= linked, sorted({p.name for p in PAGES} - linked)


# -- README -------------------------------------------------------------------------------------------------------
def test_readme_is_under_150_lines():
    lines = len(README.read_text().splitlines())
    assert lines < 150, f"README.md is {lines} lines: move detail into docs/"


def test_readme_test_command_is_what_ci_runs():
    command = "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && .venv/bin/pytest -q -n 2"
    assert command in README.read_text().splitlines()
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


def _table(text: str, header: str) -> str:
    lines = text.splitlines()
    start = lines.index(header)
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


def _first_python_block(text: str, heading: str) -> str:
    return re.search(r"```python\n(.*?)```", text[text.index(heading):], re.S).group(1)


def test_readme_formats_table_and_python_example_are_the_docs_own():
    """Written in README for newcomers and on their docs pages for the site: the two copies must not drift."""
    readme, header = README.read_text(), next(l for l in README.read_text().splitlines() if l.startswith("| format"))
    assert _table(readme, header) == _table((DOCS / "formats.md").read_text(), header)
    assert _first_python_block(readme, "## Python API") == _first_python_block((DOCS / "python-api.md").read_text(),
                                                                                 "# Python API")


# -- runnable blocks ----------------------------------------------------------------------------------------------
def test_runnable_markers_sit_right_before_a_bash_or_python_fence():
    problems = [p for path in SOURCES for p in runnable_blocks(path.read_text(), path.name)[1]]
    assert not problems, problems
    blocks = _all_blocks()
    assert {b.lang for b in blocks} == {"bash", "python"} and len(blocks) >= 10, "the docs mark their blocks"
    assert any(b.where.startswith("README.md") for b in blocks)


def test_runnable_blocks_are_valid_and_name_real_cli_commands():
    parser, commands = _cli()
    blocks = _all_blocks()
    problems = [p for block in blocks for p in block_problems(block, parser, commands)]
    assert not problems, "\n".join(problems)
    named = {argv[0] for b in blocks if b.lang == "bash" for argv in pocketformer_commands(b)}
    assert {"export", "verify", "bundle", "serve-bench", "sweep"} <= named, named


def test_the_block_checks_catch_what_they_are_for():
    """Each kind of fault, in a sample page: the checks must report every one."""
    parser, commands = _cli()
    sample = "\n".join([
        "````markdown", MARKER, "```bash", "pocketformer no-such-command x", "```", "````",  # an example of one
        MARKER, "```bash", ".venv/bin/pocketformer no-such-command x", "```",
        MARKER, "```bash", "pocketformer export mobilevit_xxs --no-such-flag", "```",
        MARKER, "```bash", "echo ok && pocketformer zoo list; if then", "```",
        MARKER, "```python", "def f(:", "```",
        MARKER, "```python", "# pocketformer no-such-command", "```",
        MARKER, "```json", "{}", "```",
        MARKER, "", "```bash", "true", "```",
    ])
    blocks, misplaced = runnable_blocks(sample, "sample.md")
    assert [b.lang for b in blocks] == ["bash", "bash", "bash", "python", "python"]
    assert len(misplaced) == 2
    assert pocketformer_commands(blocks[2]) == [["zoo", "list"]]
    for block in blocks:
        assert block_problems(block, parser, commands), f"no problem found in {block}"
    good = Block("good", "bash", ".venv/bin/pocketformer export mobilevit_xxs --to pte \\\n    --precision int8  # x\n")
    assert pocketformer_commands(good) == [["export", "mobilevit_xxs", "--to", "pte", "--precision", "int8"]]
    assert block_problems(good, parser, commands) == []
