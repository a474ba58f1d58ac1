"""Run every benchmark script in this folder, one after another (`make bench`).

Each script prints its own table and writes netCDF + markdown to benchmarks/results/.
A script whose optional dependencies are absent skips that part and says so.

Usage: python benchmarks/run_all.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--only", nargs="*", default=None, help="script stems (default: all)")
    args = parser.parse_args(argv)
    scripts = sorted(p for p in HERE.glob("*.py") if p.name != pathlib.Path(__file__).name)
    if args.only:
        unknown = set(args.only) - {p.stem for p in scripts}
        if unknown:
            have = [p.stem for p in scripts]
            parser.error(f"unknown benchmark(s) {sorted(unknown)}; have {have}")
        scripts = [p for p in scripts if p.stem in args.only]
    failed = []
    for script in scripts:
        cmd = [sys.executable, str(script)]
        print(f"\n=== {script.name} ===", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"=== {script.name}: exit {rc} in {time.perf_counter() - t0:.1f} s ===", flush=True)
        if rc != 0:
            failed.append(script.name)
    if failed:
        print(f"failed: {failed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
