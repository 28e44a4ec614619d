"""`make stage2`: thin entry point; see `vtp-gen stage2 --help`."""

import sys

from vtp_gen.pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["stage2", *sys.argv[1:]]))
