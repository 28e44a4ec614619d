"""`make stage1`: thin entry point; see `vtp-gen stage1 --help`."""

import sys

from vtp_gen.pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["stage1", *sys.argv[1:]]))
