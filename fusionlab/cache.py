"""A content-addressed disk cache for compile results.

Where: ``$FUSIONLAB_CACHE_DIR`` if set (read at every call), else
``$XDG_CACHE_HOME/fusionlab``, else ``~/.cache/fusionlab``.

An entry lives at ``<dir>/<namespace>/<key[:2]>/<key>.entry``; ``key`` is a sha256 of
everything the result depends on (see :func:`inspect_key`). The file is one JSON header
line ``{"format": ..., "sha256": ..., "size": ...}`` followed by the payload (JSON). It
is written to a temporary file in the same directory and moved into place with
``os.replace``, so a reader sees either no entry or a whole one, never half of one,
however many processes write at once. A reader checks size and checksum: a truncated or
garbled entry raises :class:`CacheCorruptError` (and is removed), and the caller rebuilds it.

Generated kernel modules (Triton reads kernel source from files) live beside the entries in
``<dir>/modules``; ``cache clear`` removes them too.

``python -m fusionlab cache info|clear`` is :func:`main`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

FORMAT = "fusionlab-cache/1"
SCHEMA = 1  # bump when what an entry holds changes
SUFFIX = ".entry"
TMP_PREFIX = ".tmp-"
NAMESPACES = ("inspect", "checks", "graphs", "values")  # checks, graphs: fusionlab.executors; values: fusionlab.inductor
MODULES = "modules"  # generated kernel modules (fusionlab.kernels.kernel writes them; Triton reads source from files)


class CacheCorruptError(Exception):
    """A cache entry failed its size or checksum check (it has been removed)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"corrupt cache entry {path}: {reason}")
        self.path = path
        self.reason = reason


def cache_dir() -> Path:
    """The cache directory (not created)."""
    d = os.environ.get("FUSIONLAB_CACHE_DIR", "").strip()
    if d:
        return Path(d).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "fusionlab"


def make_key(*parts: Any) -> str:
    """sha256 of the JSON form of ``parts`` (dict keys sorted)."""
    blob = json.dumps([SCHEMA, *parts], sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def inspect_key(ks, target: str, triton_version: str, options: dict | None = None) -> str:
    """The key of one kernel's compile report for ``target``.

    It covers the module text, signature, constexprs, the integer arguments' values (the
    compile specializes on them), num_warps, the target, the triton
    version and the compile options (including the TRITON_* settings that change code,
    such as the ptxas paths).
    """
    return make_key(
        "inspect",
        ks.name,
        ks.source,
        dict(ks.signature),
        dict(ks.constexprs),
        dict(getattr(ks, "int_args", {}) or {}),
        "jit-specialized/1",  # pointers 16-byte aligned, ints by value (see inspect/_worker.py)
        int(ks.num_warps),
        target,
        triton_version,
        options or {},
    )


def entry_path(key: str, namespace: str = "inspect") -> Path:
    if len(key) < 8 or not all(c in "0123456789abcdef" for c in key):
        raise ValueError(f"not a cache key: {key!r}")
    return cache_dir() / namespace / key[:2] / f"{key}{SUFFIX}"


def put(key: str, payload: Any, namespace: str = "inspect") -> Path:
    """Store ``payload`` (JSON-able) under ``key``; atomic with respect to readers."""
    path = entry_path(key, namespace)
    body = json.dumps(payload, separators=(",", ":")).encode()
    header = json.dumps(
        {"format": FORMAT, "sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header.encode() + b"\n" + body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def get(key: str, namespace: str = "inspect") -> Any | None:
    """The payload stored under ``key``, or None. Raises CacheCorruptError for a bad entry."""
    path = entry_path(key, namespace)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    reason = _check(data)
    if reason is None:
        try:
            return json.loads(data.split(b"\n", 1)[1])
        except ValueError as e:
            reason = f"payload is not JSON ({e})"
    with contextlib.suppress(OSError):
        path.unlink()
    raise CacheCorruptError(path, reason)


def _check(data: bytes) -> str | None:
    head, sep, body = data.partition(b"\n")
    if not sep:
        return "no header line (truncated?)"
    try:
        h = json.loads(head)
    except ValueError:
        return "header is not JSON (garbled)"
    if not isinstance(h, dict) or h.get("format") != FORMAT:
        return f"unknown format {h.get('format') if isinstance(h, dict) else h!r}"
    if len(body) != h.get("size"):
        return f"payload is {len(body)} bytes, header says {h.get('size')} (truncated?)"
    if hashlib.sha256(body).hexdigest() != h.get("sha256"):
        return "payload checksum mismatch (garbled)"
    return None


def remove(key: str, namespace: str = "inspect") -> bool:
    try:
        entry_path(key, namespace).unlink()
        return True
    except FileNotFoundError:
        return False


def _files(root: Path):
    """Our entry files and leftover temporary files (nothing else is ever touched)."""
    for ns in NAMESPACES:
        base = root / ns
        if not base.is_dir():
            continue
        for sub in base.iterdir():
            if sub.is_dir() and len(sub.name) == 2:
                for f in sub.iterdir():
                    if f.is_file() and f.name.endswith(SUFFIX):
                        yield f


def cache_info() -> dict:
    """``{"dir", "entries", "bytes"}`` for the cache directory."""
    root = cache_dir()
    entries = nbytes = 0
    for f in _files(root):
        try:
            size = f.stat().st_size
        except OSError:
            continue
        nbytes += size
        entries += not f.name.startswith(TMP_PREFIX)
    return {"dir": str(root), "entries": entries, "bytes": nbytes}


def cache_clear() -> int:
    """Remove every entry (and stale temporary file); return how many entries went."""
    root = cache_dir()
    removed = 0
    for f in list(_files(root)):
        try:
            f.unlink()
        except OSError:
            continue
        removed += not f.name.startswith(TMP_PREFIX)
    for ns in NAMESPACES:
        base = root / ns
        if base.is_dir():
            for sub in base.iterdir():
                with contextlib.suppress(OSError):
                    sub.rmdir()  # only when empty
            with contextlib.suppress(OSError):
                base.rmdir()
    modules = root / MODULES
    if modules.is_dir():
        for f in modules.glob("*.py"):
            with contextlib.suppress(OSError):
                f.unlink()
                removed += 1
        shutil.rmtree(modules / "__pycache__", ignore_errors=True)
        with contextlib.suppress(OSError):
            modules.rmdir()
    return removed


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def main(argv: list[str] | None = None) -> int:
    """``fusionlab cache info`` / ``fusionlab cache clear``."""
    p = argparse.ArgumentParser(
        prog="fusionlab cache",
        description="Show or clear fusionlab's compile cache (moved by FUSIONLAB_CACHE_DIR).",
    )
    sub = p.add_subparsers(dest="cmd", metavar="{info,clear}")
    sub.add_parser("info", help="where the cache is, how many entries, how big")
    sub.add_parser("clear", help="remove every cache entry")
    args = p.parse_args(argv)
    if args.cmd == "info":
        info = cache_info()
        print(f"fusionlab cache: {info['dir']}")
        print(f"  entries: {info['entries']}")
        print(f"  size:    {_human(info['bytes'])}")
        if "FUSIONLAB_CACHE_DIR" not in os.environ:
            print("  (set FUSIONLAB_CACHE_DIR to move it)")
        return 0
    if args.cmd == "clear":
        before = cache_info()
        n = cache_clear()
        print(
            f"removed {n} cache entr{'y' if n == 1 else 'ies'} ({_human(before['bytes'])}) from {before['dir']}"
        )
        return 0
    p.print_help()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
