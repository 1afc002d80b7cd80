"""Command line front: ``clipdetect <command> ...``, one module per subcommand."""
from clipdetect.cli.main import main

__all__ = ["main"]
