"""The `wobble` command line: one command per stage, `wobble run` for the weekly path, `wobble demo`.

`main` holds the app and what every command shares (one-line errors, progress, run summaries);
`stages`, `flows` and `review` add their commands to it. Heavy libraries are imported inside the
commands that need them, so `wobble --help` stays fast.
"""

from wobble.cli import flows, review, stages, vault  # noqa: F401  (each adds its commands to the app)
from wobble.cli.main import app, main

__all__ = ["app", "main"]
