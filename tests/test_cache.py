"""Tests for fusionlab.cache: the content-addressed, checksummed, atomic disk cache."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from _kernel_sources import ADD_RELU as POINTWISE

from fusionlab import cache
from fusionlab.codegen.source import KernelSource
from fusionlab.inspect.compile import inspect_many, inspect_source


def add_relu(xblock: int = 1024) -> KernelSource:
    return KernelSource(
        name="fused_add_relu_0",
        launcher="launch_fused_add_relu_0",
        source=POINTWISE,
        signature={"in_a": "*fp32", "in_b": "*fp32", "out_y": "*fp32", "xnumel": "i32"},
        constexprs={"XBLOCK": xblock},
        num_warps=4,
    )


@pytest.fixture
def cdir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("FUSIONLAB_CACHE_DIR", str(d))
    return d


def test_dir_from_env_at_call_time(tmp_path, monkeypatch):
    monkeypatch.delenv("FUSIONLAB_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "fusionlab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_dir() == Path.home() / ".cache" / "fusionlab"
    monkeypatch.setenv("FUSIONLAB_CACHE_DIR", str(tmp_path / "mine"))
    assert cache.cache_dir() == tmp_path / "mine"


def test_put_get_info_clear(cdir, capsys):
    assert cache.cache_info() == {"dir": str(cdir), "entries": 0, "bytes": 0}
    k1, k2 = cache.make_key("a", 1), cache.make_key("a", 2)
    assert k1 != k2 and len(k1) == 64 and k1 == cache.make_key("a", 1)
    assert cache.get(k1) is None
    p = cache.put(k1, {"x": [1, 2, 3], "s": "é"})
    cache.put(k2, {"y": None})
    assert p.is_relative_to(cdir) and p.name == f"{k1}.entry"
    assert cache.get(k1) == {"x": [1, 2, 3], "s": "é"} and cache.get(k2) == {"y": None}
    info = cache.cache_info()
    assert info["entries"] == 2 and info["bytes"] > 0
    (cdir / "unrelated.txt").write_text("not ours")  # never touched by clear
    assert cache.main(["info"]) == 0
    out = capsys.readouterr().out
    assert str(cdir) in out and "entries: 2" in out
    assert cache.main(["clear"]) == 0
    assert "removed 2 cache entries" in capsys.readouterr().out
    assert cache.cache_info()["entries"] == 0 and cache.get(k1) is None
    assert (cdir / "unrelated.txt").exists()
    assert cache.cache_clear() == 0
    assert cache.main([]) == 2


@pytest.mark.parametrize("damage", ["truncate", "garble", "header", "empty"])
def test_corrupt_entries_are_detected_and_removed(cdir, damage):
    key = cache.make_key("corrupt", damage)
    path = cache.put(key, {"payload": "x" * 1000})
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) - 100])
    elif damage == "garble":
        i = len(data) - 50
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :])
    elif damage == "header":
        path.write_bytes(b"{not json" + data[5:])
    else:
        path.write_bytes(b"")
    with pytest.raises(cache.CacheCorruptError) as e:
        cache.get(key)
    assert e.value.path == path and e.value.reason
    assert not path.exists()
    assert cache.get(key) is None  # gone: the caller rebuilds it


def test_concurrent_threads_never_see_half_entries(cdir):
    key = cache.make_key("race")
    payloads = [{"writer": i, "blob": str(i) * 20000} for i in range(4)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def write(p):
        for _ in range(40):
            cache.put(key, p)

    def read():
        while not stop.is_set():
            try:
                got = cache.get(key)
                assert got is None or got in payloads
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
                return

    readers = [threading.Thread(target=read) for _ in range(2)]
    writers = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors[0]
    assert cache.get(key) in payloads
    assert not [f for f in cdir.rglob("*") if f.name.startswith(cache.TMP_PREFIX)]


RACE_SCRIPT = r"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("c", sys.argv[1])
c = importlib.util.module_from_spec(spec); spec.loader.exec_module(c)
me = int(sys.argv[2])
key = c.make_key("procs")
bad = 0
for i in range(150):
    c.put(key, {"w": me, "blob": "z" * (5000 + 997 * me)})
    try:
        got = c.get(key)
        assert got is None or got["blob"] == "z" * (5000 + 997 * got["w"])
    except c.CacheCorruptError:
        bad += 1
print(bad)
"""


def test_concurrent_processes_never_see_half_entries(cdir):
    env = {**os.environ, "FUSIONLAB_CACHE_DIR": str(cdir)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE_SCRIPT, cache.__file__, str(i)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(3)
    ]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert outs == ["0", "0", "0"]


def test_inspect_rebuilds_a_corrupt_entry(cdir):
    first = inspect_source(add_relu(), "sm_80")
    assert first.ok and not first.cached, first.error
    entries = list(cdir.rglob("*.entry"))
    assert len(entries) == 1
    hit = inspect_source(add_relu(), "sm_80")
    assert hit.cached and hit.stages == first.stages
    # truncate it: detected, reported, rebuilt
    data = entries[0].read_bytes()
    entries[0].write_bytes(data[: len(data) // 2])
    rebuilt = inspect_source(add_relu(), "sm_80")
    assert rebuilt.ok and not rebuilt.cached
    assert any("corrupt" in n and "rebuilt" in n for n in rebuilt.notes)
    assert rebuilt.stages == first.stages
    assert inspect_source(add_relu(), "sm_80").cached  # the rebuilt entry is good
    # garble one byte in the middle
    data = entries[0].read_bytes()
    i = len(data) // 2
    entries[0].write_bytes(data[:i] + bytes([data[i] ^ 0x20]) + data[i + 1 :])
    again = inspect_many([add_relu()], "sm_80", progress=False)[0]
    assert again.ok and not again.cached and any("checksum" in n for n in again.notes)


def test_key_covers_what_changes_the_code(cdir):
    ks = add_relu()
    base = cache.inspect_key(ks, "sm_90", "3.9.0", {})
    assert base == cache.inspect_key(add_relu(), "sm_90", "3.9.0", {})
    assert base != cache.inspect_key(add_relu(xblock=512), "sm_90", "3.9.0", {})
    assert base != cache.inspect_key(ks, "sm_80", "3.9.0", {})
    assert base != cache.inspect_key(ks, "sm_90", "3.10.0", {})
    assert base != cache.inspect_key(ks, "sm_90", "3.9.0", {"num_stages": 3})
    other = KernelSource(**{**ks.__dict__, "num_warps": 8})
    assert base != cache.inspect_key(other, "sm_90", "3.9.0", {})
    other = KernelSource(**{**ks.__dict__, "source": ks.source + "\n# edited\n"})
    assert base != cache.inspect_key(other, "sm_90", "3.9.0", {})


def test_respects_cache_dir_and_cache_false(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("FUSIONLAB_CACHE_DIR", str(a))
    assert inspect_source(add_relu(xblock=256), "sm_80").ok
    monkeypatch.setenv("FUSIONLAB_CACHE_DIR", str(b))
    rep = inspect_source(add_relu(xblock=256), "sm_80")
    assert not rep.cached  # a different cache dir is a different cache
    assert len(list(a.rglob("*.entry"))) == 1 and len(list(b.rglob("*.entry"))) == 1
    monkeypatch.setenv("FUSIONLAB_CACHE_DIR", str(tmp_path / "c"))
    assert not inspect_source(add_relu(xblock=256), "sm_80", cache=False).cached
    assert not (tmp_path / "c").exists()
