"""`make fuzz`: run every harness (or one) for a while; crashes are saved as files.

    python fuzz/run.py [--seconds 60] [--only NAME] [--out fuzz/findings]

Each harness runs in its own process (atheris takes over the process) with a corpus
seeded from valid inputs. A crash leaves its input in --out and a non-zero exit.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from fuzz.harnesses import HARNESSES, seeds  # the harnesses live beside this script

WORKER = """
import sys
import atheris
with atheris.instrument_imports(include=["whatsap2p"]):
    from fuzz.harnesses import HARNESSES
target = HARNESSES[sys.argv.pop(1)]
atheris.Setup(sys.argv, target)
atheris.Fuzz()
"""


def run(name: str, seconds: int, out: Path) -> int:
    corpus = Path(tempfile.mkdtemp(prefix=f"corpus-{name}-"))
    for n, seed in enumerate(seeds(name)):
        (corpus / f"seed-{n}").write_bytes(seed)
    out.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-c",
        WORKER,
        name,
        f"-max_total_time={seconds}",
        f"-artifact_prefix={out}/{name}-",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        str(corpus),
    ]
    result = subprocess.run(command, cwd=HERE.parent, capture_output=True, text=True, check=False)
    stats = [line for line in result.stderr.splitlines() if line.startswith("stat::")]
    runs = next(
        (line.split(":")[-1].strip() for line in stats if "number_of_executed_units" in line), "?"
    )
    verdict = "ok" if result.returncode == 0 else f"CRASH (exit {result.returncode})"
    print(f"{name:>10}: {seconds} s, {runs} inputs, {verdict}", flush=True)
    if result.returncode != 0:
        print(result.stderr[-4000:], file=sys.stderr)
    return result.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=60, help="per harness")
    parser.add_argument("--only", choices=sorted(HARNESSES))
    parser.add_argument("--out", type=Path, default=HERE / "findings")
    args = parser.parse_args()
    names = [args.only] if args.only else list(HARNESSES)
    failures = [name for name in names if run(name, args.seconds, args.out.resolve()) != 0]
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
