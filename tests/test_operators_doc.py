"""docs/operators.md's examples, run as the page says. The page's first ```python block
(the events and their stream) starts every example; each later block is an example, run
after it through the real log, worker and store (`kappaflow.testing.run_events`, with
``settings`` the plugin's fixture); and each block of ``>>>`` lines after an example is
checked against it as in a Python session: an expression's value equals the value the
page shows below it, and a traceback's last line names the exception and its message."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import kappaflow.ops
import kappaflow.testing
from kappaflow.settings import Settings
from kappaflow.store import Store

DOC = Path(__file__).resolve().parents[1] / "docs" / "operators.md"
BLOCK = re.compile(r"^(#+ [^\n]*)$|^```python\n(.*?)^```$", re.M | re.S)


@dataclass
class Check:
    source: str
    """A statement or an expression, as after ``>>>`` and ``...``."""
    shown: str
    """What the page shows below it: a value, a traceback, or nothing."""


@dataclass
class Example:
    heading: str
    code: str
    checks: list[Check] = field(default_factory=list)


def checks(block: str) -> Iterator[Check]:
    """The ``>>>`` statements of a block, each with the lines shown below it."""
    for part in re.split(r"^>>> ", block, flags=re.M)[1:]:
        lines = part.splitlines()
        source = [lines.pop(0)]
        while lines and lines[0].startswith("... "):
            source.append(lines.pop(0).removeprefix("... "))
        yield Check("\n".join(source), "\n".join(lines))


def read_page() -> tuple[str, list[Example]]:
    """The page's first block, and its examples."""
    first: str | None = None
    heading, examples = "", []
    for match in BLOCK.finditer(DOC.read_text()):
        title, code = match.groups()
        if title is not None:
            heading = title.lstrip("# ")
        elif first is None:
            first = code
        elif code.startswith(">>> "):
            assert examples, f"a block of >>> lines before any example, under {heading}"
            examples[-1].checks += checks(code)
        else:
            examples.append(Example(heading, code))
    assert first is not None, f"{DOC} has no python block"
    return first, examples


FIRST, EXAMPLES = read_page()


def test_the_page_has_an_example_of_every_operator() -> None:
    code = "\n".join(example.code for example in EXAMPLES)
    shown = {name for name in kappaflow.ops.__all__ if re.search(rf"\b{name}\(", code)}
    # Fanout: the page's list of processors; Measure: what count() and the others make
    assert set(kappaflow.ops.__all__) - shown == {"Fanout", "Measure"}
    assert all(example.checks for example in EXAMPLES), "every example shows its result"


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.heading for example in EXAMPLES])
def test_an_example_gives_what_the_page_shows(
    example: Example, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, stores = kappaflow.testing.run_events, []

    def run_events(*arguments: Any, **options: Any) -> Store:
        stores.append(run(*arguments, **options))
        return stores[-1]

    monkeypatch.setattr(kappaflow.testing, "run_events", run_events)  # to close its stores
    names: dict[str, Any] = {"settings": settings}
    try:
        exec(compile(FIRST, f"{DOC.name}: the events", "exec"), names)
        exec(compile(example.code, f"{DOC.name}: {example.heading}", "exec"), names)
        for check in example.checks:
            verify(check, names)
    finally:
        for store in stores:
            store.close()


def verify(check: Check, names: dict[str, Any]) -> None:
    """Run ``check``'s statement, or compare its value, or the exception it raises,
    with what the page shows."""
    if check.shown.startswith("Traceback"):
        # the last line, "module.Error: message", may wrap: the lines after the indented
        shown = " ".join(line for line in check.shown.splitlines()[1:] if not line[:1].isspace())
        with pytest.raises(Exception) as raised:
            exec(check.source, names)
        error = raised.value
        assert " ".join(f"{type(error).__module__}.{type(error).__name__}: {error}".split()) == (
            " ".join(shown.split())
        )
    elif check.shown:
        assert eval(check.source, names) == eval(check.shown, names), check.source
    else:
        exec(check.source, names)
