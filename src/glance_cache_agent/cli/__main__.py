"""``python -m glance_cache_agent.cli``: the console script without the wrapper.

Tests and the systemd units' documentation run the CLI this way so they need
no installed entry point.
"""

from . import main

if __name__ == "__main__":
    raise SystemExit(main())
