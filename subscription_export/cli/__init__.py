"""`subscription-export`: set up capture, run exports, inspect state.

One module per command or command group, each with its own typer `app`; `index.py` lists them
and imports one only when it runs.
"""

from subscription_export.cli.app import app, main

__all__ = ["app", "main"]
