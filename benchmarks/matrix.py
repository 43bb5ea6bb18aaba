"""The seed's benchmark matrix: FP32, FP16, BF16, A8W8, A8W4, INT8 (static), FP8, MXFP8,
MXFP4, MX6, NVFP4 on GEMM shapes and on the bundled MiniLM, in one process.

    python benchmarks/matrix.py --quick                      # smoke run, a few minutes
    python benchmarks/matrix.py --json bench.json --html bench.html

Same as ``lowbit bench`` (see ``lowbit bench --help`` for every option): prints the
tables, writes JSON (and an HTML page with the speed-vs-accuracy plot). Wall-clock
figures: run on a quiet machine and record the command with the numbers.
"""

from __future__ import annotations

import argparse
import sys

from lowbit.cli import bench_cmd


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/matrix.py")
    sub = parser.add_subparsers(dest="command")
    bench_cmd.add_parser(sub)
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return bench_cmd.run(args)


if __name__ == "__main__":
    sys.exit(main())
