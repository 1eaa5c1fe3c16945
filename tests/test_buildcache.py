"""The one build cache (mam_tf.common.buildcache): built once per key by one process, a failed
or half build is never taken for a finished one."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from mam_tf.common import buildcache

# A build that records each time it runs (one line in `runs`, outside the cache), then takes a
# while so that a second process surely arrives while it is under way.
_RACER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mam_tf.common.buildcache import cached_build

    final, runs = Path(sys.argv[1]), Path(sys.argv[2])

    def build(b):
        with open(runs, "a") as f:
            f.write("built\\n")
        time.sleep(1.0)
        (b.dir / "lib.so").write_bytes(b"x" * 1000)

    print(cached_build(final, build, what="a test library"))
""")


def _counting_build(runs: list):
    def build(b):
        runs.append(b.dir)
        (b.dir / "lib.so").write_bytes(b"x" * 1000)
        (b.dir / "sub").mkdir()
        (b.dir / "sub" / "data.json").write_text("{}")
    return build


def test_two_processes_racing_build_once(tmp_path):
    final, runs = tmp_path / "cache" / "thing-0123", tmp_path / "runs.txt"
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(final), str(runs)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o[0].strip() for o in outs] == [str(final)] * 2
    assert runs.read_text() == "built\n"  # one build; the other process waited and reused it
    assert (final / "lib.so").read_bytes() == b"x" * 1000
    # Nothing else is left beside the build but its lock: no temporary directory.
    assert sorted(p.name for p in final.parent.iterdir()) == ["thing-0123", "thing-0123.lock"]


def test_a_finished_build_is_reused_and_lists_its_files(tmp_path):
    runs = []
    final = buildcache.cached_build(tmp_path / "k", _counting_build(runs), what="a test library")
    assert buildcache.cached_build(final, _counting_build(runs), what="a test library") == final
    assert len(runs) == 1
    assert json.loads((final / buildcache.MARKER).read_text()) == {
        "lib.so": 1000, "sub/data.json": 2}


def test_a_failed_build_leaves_no_finished_directory_and_names_its_log(tmp_path):
    final = tmp_path / "k"

    def build(b):
        (b.dir / "half.o").write_bytes(b"partial")
        b.run([sys.executable, "-c",
               "import sys; [print('line', i, file=sys.stderr) for i in range(40)]; sys.exit(3)"],
              "compiling the test library")

    class ToolError(RuntimeError):
        pass

    with pytest.raises(ToolError) as e:
        buildcache.cached_build(final, build, what="a test library", error=ToolError)
    message = str(e.value)
    failed = tmp_path / "k.failed"
    assert "building a test library: compiling the test library failed" in message
    assert "exited 3" in message and str(failed / buildcache.LOG) in message
    assert "line 39" in message and "line 0\n" not in message  # the last lines, not all
    assert not final.exists() and not buildcache.is_complete(final)
    assert "line 39" in (failed / buildcache.LOG).read_text()
    # The next call builds again (and succeeds), removing the failed build's leftovers.
    runs = []
    buildcache.cached_build(final, _counting_build(runs), what="a test library")
    assert len(runs) == 1 and buildcache.is_complete(final) and not failed.exists()


def test_an_exception_inside_the_build_is_reported_with_the_log(tmp_path):
    def build(b):
        b.note("step one done")
        raise KeyError("mcu_mark_begin")

    with pytest.raises(buildcache.BuildError, match=r"(?s)KeyError: 'mcu_mark_begin'.*"
                                                    r"k\.failed.*step one done"):
        buildcache.cached_build(tmp_path / "k", build, what="a test library")
    assert not (tmp_path / "k").exists()


@pytest.mark.parametrize("damage", ["no marker", "file truncated", "file missing",
                                    "marker unreadable"])
def test_a_half_or_corrupted_directory_is_rebuilt(tmp_path, damage):
    runs = []
    final = buildcache.cached_build(tmp_path / "k", _counting_build(runs), what="a test library")
    if damage == "no marker":
        (final / buildcache.MARKER).unlink()
    elif damage == "file truncated":
        (final / "lib.so").write_bytes(b"x" * 10)
    elif damage == "file missing":
        (final / "sub" / "data.json").unlink()
    else:
        (final / buildcache.MARKER).write_text("{not json")
    assert not buildcache.is_complete(final)
    assert buildcache.cached_build(final, _counting_build(runs), what="a test library") == final
    assert len(runs) == 2 and buildcache.is_complete(final)
    assert (final / "lib.so").read_bytes() == b"x" * 1000


def test_build_key_follows_file_names_contents_and_parts(tmp_path):
    a = tmp_path / "a.c"
    a.write_text("int a;")
    key = buildcache.build_key([a], root=tmp_path, parts=["cc", "-O2"])
    assert key == buildcache.build_key([a], root=tmp_path, parts=["cc", "-O2"])
    assert len(key) == 16 and int(key, 16) >= 0
    assert buildcache.build_key([a], root=tmp_path, parts=["cc", "-O3"]) != key
    assert buildcache.build_key([a], root=tmp_path, parts=["cc-O2"]) != key
    a.write_text("int a = 1;")
    changed = buildcache.build_key([a], root=tmp_path, parts=["cc", "-O2"])
    assert changed != key
    b = tmp_path / "b.c"
    a.rename(b)
    assert buildcache.build_key([b], root=tmp_path, parts=["cc", "-O2"]) != changed
