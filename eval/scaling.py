"""Not built yet: tracked in issue #9."""

import sys

if __name__ == "__main__":
    print("scaling: not built yet (tracked in issue #9)", file=sys.stderr)
    sys.exit(2)
