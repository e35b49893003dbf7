"""``python -m benchmarks``: run the benchmark cases and write BENCHMARKS.md (see runner)."""

import sys

from benchmarks.runner import main

if __name__ == "__main__":
    sys.exit(main())
