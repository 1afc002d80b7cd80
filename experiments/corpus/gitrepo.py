"""Read files out of a bare git mirror (or an exported folder) without a work tree."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Dict, Optional

LFS_MAGIC = b"version https://git-lfs.github.com/spec/v1"


class GitRepo:
    """Files of a bare git directory at ``rev`` (default HEAD), or of a plain folder.

    ``read(path)`` returns the bytes, or ``None`` with ``why(path)`` saying what was wrong
    (blob absent from the snapshot, Git LFS pointer, not in the tree)."""

    def __init__(self, location: str | Path, rev: str = "HEAD"):
        self.root = Path(location)
        self.rev = rev
        self.bare = (self.root / "HEAD").is_file() and (self.root / "objects").is_dir()
        if not self.bare and not self.root.is_dir():
            raise FileNotFoundError(f"no git directory or folder at {str(self.root)!r}; "
                                    "point the source at a mirror (…/owner+name/repo) or an exported copy")
        self._tree: Optional[Dict[str, str]] = None
        self._why: Dict[str, str] = {}

    def _git(self, *args: str) -> str:
        return subprocess.run(["git", f"--git-dir={self.root}", *args], check=True,
                              capture_output=True, text=True).stdout

    def commit(self) -> str:
        return self._git("rev-parse", self.rev).strip() if self.bare else ""

    def tree(self) -> Dict[str, str]:
        """relative path -> blob id (bare) or absolute file path (folder)."""
        if self._tree is None:
            tree: Dict[str, str] = {}
            if self.bare:
                for line in self._git("ls-tree", "-r", "--full-tree", self.rev).splitlines():
                    meta, path = line.split("\t", 1)
                    _, kind, blob = meta.split()
                    if kind == "blob":
                        tree[path] = blob
            else:
                tree = {p.relative_to(self.root).as_posix(): str(p) for p in self.root.rglob("*") if p.is_file()}
            self._tree = tree
        return self._tree

    def read(self, path: str) -> Optional[bytes]:
        ref = self.tree().get(path)
        if ref is None:
            self._why[path] = "not in the tree"
            return None
        if self.bare:
            r = subprocess.run(["git", f"--git-dir={self.root}", "cat-file", "blob", ref], capture_output=True)
            if r.returncode != 0:
                self._why[path] = "blob absent from the snapshot"
                return None
            data = r.stdout
        else:
            data = Path(ref).read_bytes()
        if data.startswith(LFS_MAGIC):
            self._why[path] = "Git LFS pointer (content not in the snapshot)"
            return None
        return data

    def text(self, path: str) -> str:
        data = self.read(path)
        return data.decode("utf-8", errors="replace") if data is not None else ""

    def why(self, path: str) -> str:
        return self._why.get(path, "unknown")
