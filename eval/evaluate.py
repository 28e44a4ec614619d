"""`make eval`: thin entry point; see `vtp-gen eval --help`."""

import sys

from vtp_gen.pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
