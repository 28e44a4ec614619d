"""Not built yet: tracked in issue #10."""

import sys

if __name__ == "__main__":
    print("run: not built yet (tracked in issue #10)", file=sys.stderr)
    sys.exit(2)
