"""The docs name the tests that pin their rows (FIDELITY.md, RELIABILITY.md, the data README): every name must
exist, or a table drifts from the suite unnoticed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def named_tests(text: str) -> list[tuple[str, str]]:
    """(file, test name) for every `file.py::test` and following `::test` (same file as the last named)."""
    out, current = [], None
    for path, name in re.findall(r"`([\w/]+\.py)?::(\w+)", text):
        current = path or current
        if current is not None:
            out.append((current, name))
    return out


@pytest.mark.parametrize(
    ("doc", "least"), [("FIDELITY.md", 40), ("RELIABILITY.md", 20), ("vicc_fast/data/README.md", 1)]
)
def test_every_test_a_doc_names_exists(doc, least):
    names = named_tests((ROOT / doc).read_text())
    assert len(names) >= least
    missing = []
    for path, name in names:
        f = ROOT / path if path.startswith("tests/") else ROOT / "tests" / path
        if not f.is_file() or not re.search(rf"^\s*(async )?def {name}\(", f.read_text(), re.M):
            missing.append(f"{path}::{name}")
    assert not missing, f"{doc} names tests that do not exist: {missing}"
