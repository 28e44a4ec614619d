"""`make tables`: the paper's headline tables beside the numbers of your runs (runs/*/eval/metrics.json).

make tables                                  # print, and write runs/tables.md
make tables ARGS="--runs /data/runs --out -"  # other runs folder, print only
"""

import argparse
import sys
from pathlib import Path

from vtp_gen.metrics.tables import render_tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", default="runs", help="folder holding <run>/eval/metrics.json (default: runs)"
    )
    parser.add_argument(
        "--out", default=None, help="Markdown file to write (default: <runs>/tables.md; '-' = print only)"
    )
    args = parser.parse_args(argv)
    text = render_tables(args.runs)
    print(text)
    out = args.out if args.out is not None else str(Path(args.runs) / "tables.md")
    if out != "-":
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
        print(f"tables: written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
