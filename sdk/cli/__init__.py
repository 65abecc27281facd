"""The `pocketformer` command line: `app` builds the parser and dispatches; each command group with more than a
few flags has a module of its own (`inspect`, `verify`, `serve`, `sweep`, `compress`), and `common` and `feeds`
hold what they share (argument groups, error handling, building a feed from an image, text or .npy)."""
from sdk.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
