"""Provenance stamped into every result file: which code, which command, when."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional


def git_commit(path: Optional[str | Path] = None) -> Optional[str]:
    """The commit checked out at ``path`` (default: this package's folder), with ``-dirty`` when
    tracked files differ from it; None outside a git work tree or without git."""
    where = str(path or Path(__file__).resolve().parents[2])
    try:
        commit = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip()
        if not commit:
            return None
        dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(argv: Optional[List[str]] = None, **extra: Any) -> Dict[str, Any]:
    """``{"version", "commit", "argv", "date", "python", ...extra}`` for a result's JSON."""
    from clipdetect import __version__

    return {"version": __version__, "commit": git_commit(), "argv": list(sys.argv if argv is None else argv),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": sys.version.split()[0], **extra}
