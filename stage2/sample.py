"""`make sample`: thin entry point; see `vtp-gen sample --help`."""

import sys

from vtp_gen.pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["sample", *sys.argv[1:]]))
