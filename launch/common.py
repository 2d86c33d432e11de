"""Pieces every absl launcher shares."""

from __future__ import annotations

import re
import sys

from absl import app


def parse_flags(argv):
    """absl's parser, but an override of a key the config lacks is one line, not a traceback."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as error:  # raised by config_flags for --config.<unknown>
        # ml_collections nests the key's repr in the message and may add a "Did you mean" line.
        message = str(error)
        key = re.search(r"[^'\\\"]+", message)
        hint = re.search(r'Did you mean "[^"]+"', message)
        name = repr(key.group()) if key else message
        hint = f"; {hint.group()}?" if hint else ""
        print(
            f"sequax: error: a --config override names the unknown key {name}{hint}; overrides "
            "must name keys the config has (see configs/common.py base_config)",
            file=sys.stderr,
        )
        sys.exit(2)
