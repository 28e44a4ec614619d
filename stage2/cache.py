"""`make cache`: thin entry point; see `vtp-gen cache --help`."""

import sys

from vtp_gen.pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["cache", *sys.argv[1:]]))
