"""``python -m workshaper_tools.chaos``: see ``cli.py``."""

import sys

from workshaper_tools.chaos.cli import main

if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("chaos: interrupted; everything it started was stopped", file=sys.stderr)
        sys.exit(130)
