"""The dpcalib CLI examples in README.md and docs/*.md show real output.

Each fenced example line ``$ dpcalib ...`` is run, and the lines after it (up to the next ``$`` line or the end of the
block, trailing blank lines dropped) must equal what it prints on stdout and stderr. A trailing ``# comment`` on the command and an
``(exit status N)`` line or suffix are annotations: the command must then exit with N. An example with no output
lines must exit 0. Regenerate after a deliberate change with ``python -m tests.test_docs --update``.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from dpcalib.cli import run

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_STATUS = re.compile(r"\s*\(exit status (\d+)\)\s*$")


@dataclass(frozen=True)
class Example:
    path: Path
    line: int  # 0-based index of the "$ dpcalib" line
    argv: tuple[str, ...]
    expected: tuple[str, ...]  # output lines, annotations removed
    status: int
    end: int  # index one past the last output line (its trailing blank lines included)


def examples(path: Path) -> list[Example]:
    lines = path.read_text(encoding="utf-8").splitlines()
    found, fenced, i = [], False, 0
    while i < len(lines):
        text = lines[i]
        if text.startswith("```"):
            fenced = not fenced
        elif fenced and text.startswith("$ dpcalib "):
            command = text[2:].split("  #")[0].strip()
            j, out, status = i + 1, [], 0
            while j < len(lines) and not lines[j].startswith(("$ ", "```")):
                match = _STATUS.search(lines[j])
                if match:
                    status = int(match.group(1))
                    rest = lines[j][: match.start()]
                    if rest.strip():
                        out.append(rest.rstrip())
                else:
                    out.append(lines[j])
                j += 1
            while out and not out[-1].strip():
                out.pop()
            found.append(Example(path, i, tuple(shlex.split(command)[1:]), tuple(out), status, j))
            i = j
            continue
        i += 1
    return found


def execute(example: Example) -> tuple[int, list[str]]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        status = run(list(example.argv))
    return status, buffer.getvalue().rstrip("\n").splitlines()


ALL = [e for path in DOCUMENTS for e in examples(path)]


def test_documents_have_cli_examples():
    assert len(ALL) >= 10


@pytest.mark.parametrize("example", ALL, ids=[f"{e.path.name}:{e.line + 1}" for e in ALL])
def test_cli_example_output_is_real(example: Example):
    status, output = execute(example)
    assert status == example.status
    if example.expected:
        assert [_tokens(line) for line in output] == [_tokens(line) for line in example.expected]


class _Number(float):
    """A printed number, equal to another within FFT round-off (1e-9 relative): full-precision PLD output (``--csv``,
    ``--json``) differs in its last digits between numpy/pocketfft builds, and docs should not pin those digits."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, float) and math.isclose(self, other, rel_tol=1e-9, abs_tol=1e-15)

    __hash__ = float.__hash__


def _tokens(line: str) -> list[object]:
    """A line split into words and numbers; numbers compare to 1e-9 relative, everything else exactly."""
    out: list[object] = []
    for word in re.split(r"([\s,:=\[\]{}\"]+)", line.rstrip()):
        try:
            out.append(_Number(word))
        except ValueError:
            out.append(word)
    return out


def update() -> None:
    """Rewrite every example's output lines with what the command prints now (keeps exit-status annotations)."""
    for path in DOCUMENTS:
        lines = path.read_text(encoding="utf-8").splitlines()
        for example in reversed(examples(path)):
            if not example.expected:
                continue
            status, output = execute(example)
            if status:
                output = [*output, f"(exit status {status})"]
            block = lines[example.line + 1 : example.end]
            blanks = len(block) - len("\n".join(block).rstrip().splitlines())
            lines[example.line + 1 : example.end] = output + [""] * blanks
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__" and sys.argv[1:] == ["--update"]:
    update()
