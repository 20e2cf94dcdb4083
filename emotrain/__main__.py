"""`python -m emotrain` and the console script `emotrain`: train one model (or a sweep, with -m).

This module imports nothing heavy: in an inference-only install (no torch, transformers or
Hydra) it says in one line what to install instead of failing with a ModuleNotFoundError.
The Hydra application itself is emotrain.cli.
"""

from __future__ import annotations

import sys

from emotrain.errors import MissingDependencyError, require_packages


def main() -> float | None:
    try:
        require_packages("training (emotrain)")
    except MissingDependencyError as e:
        print(f"emotrain: error: {e}", file=sys.stderr)
        sys.exit(2)
    from emotrain.cli import main as hydra_cli

    return hydra_cli()


if __name__ == "__main__":
    main()
