"""What fuzzing found stays found: every input in fuzz/findings/ (saved there by
`make fuzz` when a harness crashed, named after the harness: NAME-crash-..., or added by
hand as NAME-what-it-is) is replayed through its harness and must now be handled, as must
each harness's seeds. Runs on whichever build is installed (compiled or not)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzz.harnesses import HARNESSES, seeds

FINDINGS = Path(__file__).resolve().parent.parent / "fuzz" / "findings"


def _findings() -> list[Path]:
    return sorted(path for path in FINDINGS.iterdir() if path.is_file() and path.name[0] != ".")


def _harness(finding: Path) -> str:
    return finding.name.split("-")[0]


@pytest.mark.parametrize(
    ("name", "seed"),
    [(name, seed) for name in HARNESSES for seed in seeds(name)],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_seeds_pass(name: str, seed: bytes) -> None:
    HARNESSES[name](seed)


def test_every_finding_names_its_harness() -> None:
    unknown = [path.name for path in _findings() if _harness(path) not in HARNESSES]
    assert not unknown, f"files in fuzz/findings/ not named after a harness: {unknown}"


@pytest.mark.parametrize("finding", _findings(), ids=lambda path: path.name)
def test_finding_no_longer_crashes(finding: Path) -> None:
    HARNESSES[_harness(finding)](finding.read_bytes())
