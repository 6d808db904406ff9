"""`make fuzz`: run every harness (or some) for a while, each on its kept corpus.

    python fuzz/run.py [--seconds 60] [--only NAME ...] [--out fuzz/findings]
                       [--corpus .run/fuzz-corpus]

The harnesses run on the package's Python source: a copy of src/whatsap2p without the
mypyc-compiled modules (.run/fuzz-src, made afresh each run), first on the path, so
that atheris instruments the code it fuzzes (it cannot see into a compiled module: on
the compiled build the corpus never grew past its seeds). Each harness runs in its own
process (atheris takes the process over) on its corpus, .run/fuzz-corpus/NAME, kept
between runs and seeded with valid inputs (fuzz/harnesses.py `seeds`). A crash leaves
its input in --out as NAME-crash-... (NAME-timeout-..., NAME-oom-...) and fails the
run; tests/test_fuzz_findings.py replays every file there.

For each harness it prints the seconds, the inputs executed (and per second), and the
corpus and coverage (libFuzzer's cov: edges, ft: features) when it started and when it
ended, read from libFuzzer's INITED and DONE lines. The corpus is counted twice: the
inputs libFuzzer keeps (corp:) and the files in its directory, which also holds the
inputs it has since replaced by smaller ones with the same features.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from fuzz.harnesses import DICTIONARIES, HARNESSES, INSTRUMENT, seeds  # beside this script

WORKER = """
import sys
import atheris
name = sys.argv.pop(1)
include = sys.argv.pop(1).split(",")
with atheris.instrument_imports(include=include):
    from fuzz import harnesses
import whatsap2p.protocol.framing
assert whatsap2p.protocol.framing.__file__.endswith(".py"), "not the Python source"
atheris.Setup(sys.argv, harnesses.HARNESSES[name])
atheris.Fuzz()
"""

# "#1234	INITED cov: 56 ft: 78 corp: 9/123b exec/s: 0 rss: 45Mb" (DONE alike).
_STATUS = re.compile(r"^#(\d+)\s+(INITED|DONE)\s+cov: (\d+) ft: (\d+) corp: (\d+)/")


@dataclass
class Outcome:
    name: str
    seconds: float
    inputs: int | None
    files_before: int
    files_after: int
    inited: tuple[int, int, int] | None  # cov, ft, corpus units
    done: tuple[int, int, int] | None
    returncode: int

    def line(self) -> str:
        rate = f"{self.inputs / self.seconds:,.0f}/s" if self.inputs else "?/s"
        inputs = f"{self.inputs:,}" if self.inputs is not None else "?"
        verdict = "ok" if self.returncode == 0 else f"CRASH (exit {self.returncode})"
        start = self.inited or ("?", "?", "?")
        end = self.done or ("?", "?", "?")
        return (
            f"{self.name:>19}: {self.seconds:5.0f} s, {inputs:>11} inputs ({rate:>8}), "
            f"corpus {start[2]}→{end[2]} inputs ({self.files_before}→{self.files_after} files), "
            f"cov {start[0]}→{end[0]}, ft {start[1]}→{end[1]}: {verdict}"
        )


def pure_source(where: Path) -> Path:
    """A copy of the package without its compiled modules: atheris instruments Python."""
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    shutil.copytree(ROOT / "src" / "whatsap2p", where / "whatsap2p")
    for compiled in [*where.rglob("*.so"), *where.rglob("__pycache__")]:
        if compiled.is_dir():
            shutil.rmtree(compiled)
        else:
            compiled.unlink()
    return where


def run(name: str, seconds: int, out: Path, corpora: Path, source: Path) -> Outcome:
    corpus = corpora / name
    corpus.mkdir(parents=True, exist_ok=True)
    for n, seed in enumerate(seeds(name)):
        (corpus / f"seed-{n}").write_bytes(seed)
    before = sum(1 for _ in corpus.iterdir())
    out.mkdir(parents=True, exist_ok=True)
    include = ",".join(("whatsap2p", *INSTRUMENT.get(name, ())))
    command = [
        sys.executable,
        "-c",
        WORKER,
        name,
        include,
        f"-max_total_time={seconds}",
        f"-artifact_prefix={out}/{name}-",
        "-rss_limit_mb=2048",
        "-timeout=10",
        "-print_final_stats=1",
    ]
    if name in DICTIONARIES:
        command.append(f"-dict={HERE / 'dicts' / DICTIONARIES[name]}")
    command.append(str(corpus))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(source), str(ROOT)]))
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    stderr = result.stderr
    inited = done = None
    for line in stderr.splitlines():
        if match := _STATUS.match(line):
            numbers = (int(match[3]), int(match[4]), int(match[5]))
            if match[2] == "INITED" and inited is None:
                inited = numbers
            elif match[2] == "DONE":
                done = numbers
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", stderr)
    outcome = Outcome(
        name=name,
        seconds=elapsed,
        inputs=sum(int(n) for n in runs) if runs else None,
        files_before=before,
        files_after=sum(1 for _ in corpus.iterdir()),
        inited=inited,
        done=done,
        returncode=result.returncode,
    )
    print(outcome.line(), flush=True)
    if result.returncode != 0:
        print(stderr[-6000:], file=sys.stderr, flush=True)
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=60, help="per harness")
    parser.add_argument("--only", choices=sorted(HARNESSES), nargs="+")
    parser.add_argument("--out", type=Path, default=HERE / "findings")
    parser.add_argument("--corpus", type=Path, default=ROOT / ".run" / "fuzz-corpus")
    parser.add_argument("--source", type=Path, default=ROOT / ".run" / "fuzz-src")
    args = parser.parse_args()
    source = pure_source(args.source.resolve())
    names = args.only or list(HARNESSES)
    outcomes = [
        run(name, args.seconds, args.out.resolve(), args.corpus.resolve(), source) for name in names
    ]
    failures = [o.name for o in outcomes if o.returncode != 0]
    if failures:
        print(f"crashed: {', '.join(failures)} (inputs in {args.out})", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
