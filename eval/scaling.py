"""`make scaling`: thin entry point; see `vtp-gen scaling --help` and docs/scaling.md."""

import sys

from vtp_gen.pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["scaling", *sys.argv[1:]]))
