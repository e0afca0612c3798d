"""Re-test a mutmut run's survivors against new tests, and write the run's merged verdicts.

`mutmut run NAMES` re-runs each named mutant only against the tests its stats file mapped to the mutated function
when the run began, so a test written afterwards never gets the chance to kill it. This runs each survivor whose
name matches PATTERN in the run's mutants/ copy (MUTANT_UNDER_TEST, as mutmut's workers do) against TESTS, the new
tests (the first run already showed the old ones miss it), then writes every mutant's final verdict to OUT:

    python tests/mutation_retest.py RUN_DIR PATTERN OUT TESTS...     # copy the new tests into RUN_DIR/mutants first

RUN_DIR holds `mutmut results --all true` of the first run as results.txt; a survivor killed now is recorded as
killed in OUT (one `name: status` line per mutant, sorted), the rest keep their first verdict.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from listed_mutants import FAST  # the fast in-process selection, as in pyproject's [tool.mutmut]
UNKILLED = ("survived", "timeout", "no tests")


def verdicts(path: Path) -> dict[str, str]:
    return dict(line.strip().rsplit(": ", 1) for line in path.read_text().splitlines() if ": " in line)


def killed(run: Path, name: str, tests: list[str]) -> bool:
    result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-k", FAST, *tests],
                            cwd=run / "mutants", capture_output=True,
                            env={**os.environ, "MUTANT_UNDER_TEST": name, "OMP_NUM_THREADS": "1"})
    if result.returncode not in (0, 1):
        raise SystemExit(f"{name}: pytest exited {result.returncode} (are the tests in {run / 'mutants'}?)")
    return result.returncode == 1


def main(run: Path, pattern: str, out: Path, tests: list[str]) -> None:
    status = verdicts(run / "results.txt")
    if killed(run, "", tests):  # a test that fails without any mutant would "kill" every one
        raise SystemExit(f"{' '.join(tests)} fail in {run / 'mutants'} without a mutant; fix that first")
    for name in sorted(n for n, s in status.items() if s in UNKILLED and re.search(pattern, n)):
        if killed(run, name, tests):
            status[name] = "killed"
        print(f"{name}: {status[name]}", flush=True)
    out.write_text("".join(f"{name}: {status[name]}\n" for name in sorted(status)))


if __name__ == "__main__":
    if len(sys.argv) < 5:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4:])
