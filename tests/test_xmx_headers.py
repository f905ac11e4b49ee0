"""The SYCL/ESIMD kernel source against Intel's real SYCL headers (extension/check_headers.py).

Needs clang++ and the include/ trees of the intel-sycl-rt wheels (fetched once into the cache, 110-160 MB each
to download); without either the tests skip and say why. Host pass only: no SYCL compiler is involved.
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("arcattn_check_headers", ROOT / "extension" / "check_headers.py")
check_headers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_headers)


@pytest.fixture(scope="module")
def clang():
    try:
        return check_headers.find_clang()
    except check_headers.Missing as e:
        pytest.skip(f"no clang: {e}")


@pytest.fixture(scope="module", params=check_headers.DEFAULT_VERSIONS)
def include(request, clang):
    try:
        return request.param, check_headers.fetch_headers(request.param)
    except check_headers.Missing as e:
        pytest.skip(f"no SYCL headers for {request.param}: {e}")


def test_kernel_compiles_against_intel_headers(include, clang):
    version, inc = include
    # also compiles the control, which the headers must reject: a clean result is not a pass by default
    assert check_headers.check(inc, clang, version) == []


def test_build_reads_the_sycl_major_from_intel_headers(include, tmp_path):
    """extension/build.py names the binary after __LIBSYCL_MAJOR_VERSION, read from the sycl/version.hpp beside the
    compiler: on the real headers that is 8 for oneAPI 2025.3 and 9 for 2026.0, as docs/native.md says."""
    version, inc = include
    spec = importlib.util.spec_from_file_location("arcattn_build", ROOT / "extension" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "icpx").write_text("")  # a oneAPI layout: <root>/bin/icpx beside <root>/include
    (tmp_path / "include").symlink_to(inc, target_is_directory=True)
    assert build.sycl_major_of(str(tmp_path / "bin" / "icpx")) == {"2025.3.3": 8, "2026.0.0": 9}[version]


def test_a_kernel_that_breaks_the_api_fails_the_check(tmp_path, clang, capsys):
    """The kernel bodies really are instantiated: two API misuses put into a copy of the kernel are both caught."""
    try:
        inc = check_headers.fetch_headers(check_headers.DEFAULT_VERSIONS[0])
    except check_headers.Missing as e:
        pytest.skip(f"no SYCL headers: {e}")
    src, kernel = tmp_path / "src", tmp_path / "kernel"
    shutil.copytree(ROOT / "extension" / "src", src)
    shutil.copytree(ROOT / "kernel", kernel)
    path = kernel / "xmx_attention_esimd.hpp"
    text = path.read_text()
    for old, new in [
        # DPAS takes at most 8 rows per call
        ("xmx_ns::dpas<8, M, float, float, T, T>(s0, b0, a)", "xmx_ns::dpas<8, 9, float, float, T, T>(s0, b0, a)"),
        # a VNNI-transformed 2-D load of 16-bit data is at most 32 rows high
        ("load_2d<u16, kTile, kKeyChunk, 1, false, true>", "load_2d<u16, kTile, 4 * kKeyChunk, 1, false, true>"),
    ]:
        assert old in text, old
        text = text.replace(old, new, 1)
    path.write_text(text)
    failures = check_headers.check(inc, clang, "altered", src=src, kernel=kernel, control=False)
    assert len(failures) == 1 and "kernel instances" in failures[0]
    out = capsys.readouterr().out
    assert "Repeat count must be within 1 to 8" in out and "Unsupported block height" in out


# -- the script's own failure paths (no clang, no download) -------------------------------------------------------
def _tree(path: Path, mark: str) -> Path:
    esimd = path / "include" / "sycl" / "ext" / "intel"
    esimd.mkdir(parents=True)
    (esimd / "esimd.hpp").write_text(mark)
    return path


def _pip_downloads(monkeypatch, wheel_bytes: bytes) -> None:
    """`pip download` replaced by one that leaves a wheel holding wheel_bytes."""
    def fake_pip(cmd, **kw):
        Path(cmd[cmd.index("-d") + 1], "intel_sycl_rt-1.0-py3-none-any.whl").write_bytes(wheel_bytes)
        return check_headers.subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(check_headers.subprocess, "run", fake_pip)


def test_a_damaged_wheel_is_reported_not_raised(tmp_path, monkeypatch):
    _pip_downloads(monkeypatch, b"not a zip file")
    with pytest.raises(check_headers.Missing, match="cannot be read"):
        check_headers.fetch_headers("1.0", root=tmp_path)
    assert list(tmp_path.iterdir()) == []  # no staging tree left behind


def test_headers_another_process_put_in_place_are_kept(tmp_path):
    """Two fetches of one release racing (a test run beside a check run): the tree already there is whole and in
    use, so the second one's copy is dropped instead of the first one's being deleted under its reader."""
    dest = _tree(tmp_path / "1.0", "first")
    check_headers._put_in_place(_tree(tmp_path / "staging", "second"), dest)
    assert (dest / "include/sycl/ext/intel/esimd.hpp").read_text() == "first"


def test_an_interrupted_fetch_is_replaced(tmp_path):
    dest = tmp_path / "1.0"
    (dest / "include" / "sycl").mkdir(parents=True)  # what a fetch killed half way leaves
    check_headers._put_in_place(_tree(tmp_path / "staging", "new"), dest)
    assert (dest / "include/sycl/ext/intel/esimd.hpp").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".1.0.lock", "1.0"]  # nothing left aside


def test_racing_fetches_leave_one_whole_tree(tmp_path):
    from concurrent.futures import ThreadPoolExecutor
    dest = tmp_path / "1.0"
    stagings = [_tree(tmp_path / f"staging{i}", str(i)) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda s: check_headers._put_in_place(s, dest), stagings))
    assert (dest / "include/sycl/ext/intel/esimd.hpp").read_text() in {str(i) for i in range(8)}


def test_racing_fetches_over_a_leftover_never_move_a_whole_tree(tmp_path):
    """Fetches racing over an interrupted fetch's leftover: once a whole tree is in place, a reader keeps seeing
    that same tree (no fetch moves it aside as if it were the leftover)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    for attempt in range(20):
        dest = tmp_path / str(attempt) / "1.0"
        (dest / "include" / "sycl").mkdir(parents=True)  # the leftover
        stagings = [_tree(tmp_path / str(attempt) / f"staging{i}", str(i)) for i in range(8)]
        seen, done = [], threading.Event()

        def read():
            header = dest / "include/sycl/ext/intel/esimd.hpp"
            while not done.is_set():
                try:
                    seen.append(header.read_text())
                except OSError:
                    if seen:
                        seen.append("gone")  # a whole tree was there and vanished
        reader = threading.Thread(target=read)
        reader.start()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda s: check_headers._put_in_place(s, dest), stagings))
        done.set()
        reader.join()
        assert len(set(seen)) <= 1, f"attempt {attempt}: a reader saw {sorted(set(seen))}"


def test_a_fetch_waits_for_the_one_placing_its_tree(tmp_path):
    import threading
    dest = tmp_path / "1.0"
    staging = _tree(tmp_path / "staging", "new")
    with check_headers._placing_lock(dest):
        placer = threading.Thread(target=check_headers._put_in_place, args=(staging, dest))
        placer.start()
        placer.join(0.3)
        assert placer.is_alive() and not dest.exists()  # waits while the lock is held
    placer.join(5)
    assert (dest / "include/sycl/ext/intel/esimd.hpp").read_text() == "new"


def test_a_tree_that_cannot_be_placed_is_missing_with_the_reason(tmp_path, monkeypatch):
    dest = tmp_path / "1.0"
    staging = _tree(tmp_path / "staging", "new")

    def refuse(self, target):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(check_headers.Path, "rename", refuse)
    monkeypatch.setattr(check_headers.time, "sleep", lambda s: None)
    with pytest.raises(check_headers.Missing, match="PermissionError"):
        check_headers._put_in_place(staging, dest)
    (dest / "include").mkdir(parents=True)  # a leftover that cannot be moved aside: no empty aside folder stays
    with pytest.raises(check_headers.Missing, match="PermissionError"):
        check_headers._put_in_place(staging, dest)
    assert not [p.name for p in tmp_path.iterdir() if "-stale-" in p.name]


def test_a_clang_that_does_not_exist_is_exit_2(tmp_path, capsys):
    assert check_headers.main(["--clang", str(tmp_path / "clang++-99"), "--include", str(tmp_path)]) == 2
    assert "no such program" in capsys.readouterr().err


def test_the_control_counts_only_a_static_assert_from_its_own_load():
    """The control compile proves the headers' checks are live only if the static_assert that rejects it was
    instantiated from the control's own 2-D load (header_check.cpp, the line marked ARCATTN_CONTROL_LOAD)."""
    line = check_headers.control_line()
    src = check_headers.SRC / "header_check.cpp"
    assert "load_2d<uint32_t, 16, 16, 1, true" in src.read_text().splitlines()[line - 1]
    failed = ("include/sycl/ext/intel/esimd/memory.hpp:3980:19: error: static assertion failed due to requirement "
              "'16 <= 8 * (1)': Unsupported block width")
    note = "extension/src/header_check.cpp:{}:7: note: in instantiation of function template specialization 'load_2d'"
    rejected = check_headers.rejected_by_the_control
    assert rejected(1, "\n".join([failed, note.format(line), "1 error generated."]))
    # the same assert reached from anywhere else (the kernel itself) says nothing about the control
    assert not rejected(1, "\n".join([failed, note.format(line + 40), "1 error generated."]))
    # another kind of error at the control's line, or no error at all
    assert not rejected(1, "\n".join(["header_check.cpp:{}:7: error: no member named 'load_2d'".format(line)]))
    assert not rejected(0, "")
    # the control's note belongs to the first error here, which is not a static_assert
    other = "x.hpp:1:1: error: unknown type name 'foo'"
    assert not rejected(1, "\n".join([other, note.format(line), failed, note.format(line + 40)]))
    # a warning ends the error's notes as well
    warning = "header_check.cpp:3:1: warning: unused variable 'x'"
    assert not rejected(1, "\n".join([failed, warning, note.format(line)]))
    # only a note counts, not a source excerpt that names that line
    assert not rejected(1, "\n".join([failed, "  see extension/src/header_check.cpp:{}:7:".format(line)]))
    # clang 15 and older spell the error "static_assert failed"
    old_clang = failed.replace("static assertion failed", "static_assert failed")
    assert rejected(1, "\n".join([old_clang, note.format(line), "1 error generated."]))


def test_a_source_without_the_control_mark_is_missing(tmp_path):
    (tmp_path / "header_check.cpp").write_text("int main() { return 0; }\n")
    with pytest.raises(check_headers.Missing, match="ARCATTN_CONTROL_LOAD"):
        check_headers.control_line(tmp_path)
    with pytest.raises(check_headers.Missing, match="cannot read"):
        check_headers.control_line(tmp_path / "nowhere")
    # found before any compile, so a control that would compile cleanly still gives exit 2, not 1
    with pytest.raises(check_headers.Missing, match="ARCATTN_CONTROL_LOAD"):
        check_headers.check(tmp_path, "clang++-that-never-runs", "label", src=tmp_path)


def test_a_cache_that_cannot_be_written_is_missing(tmp_path, monkeypatch):
    _pip_downloads(monkeypatch, b"PK")
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(check_headers.Missing, match="cannot write the header cache"):
        check_headers.fetch_headers("1.0", root=blocker / "sycl-headers")


def test_a_file_system_without_locks_still_gets_its_headers(tmp_path, monkeypatch):
    import errno

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(check_headers.fcntl, "flock", no_locks)
    dest = tmp_path / "1.0"
    check_headers._put_in_place(_tree(tmp_path / "staging", "new"), dest)
    assert (dest / "include/sycl/ext/intel/esimd.hpp").read_text() == "new"


def test_a_lock_file_another_user_made_is_opened_read_only(tmp_path, monkeypatch):
    import os
    real_open, modes = os.open, []

    def open_as_another_user(path, flags, *args):
        modes.append(flags & (os.O_RDWR | os.O_WRONLY))
        if flags & os.O_RDWR:
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)
    (tmp_path / ".1.0.lock").write_bytes(b"")
    monkeypatch.setattr(check_headers.os, "open", open_as_another_user)
    dest = tmp_path / "1.0"
    check_headers._put_in_place(_tree(tmp_path / "staging", "new"), dest)
    assert (dest / "include/sycl/ext/intel/esimd.hpp").read_text() == "new"
    assert modes == [os.O_RDWR, 0]


def test_windows_locking_waits_only_for_another_fetch(tmp_path, monkeypatch):
    """The msvcrt branch, with a stand-in for msvcrt: a held lock (EACCES) is waited for, and released after; a
    file system without byte-range locks (any other error) lets the fetch go on unlocked."""
    import errno
    import types
    calls = []

    def locking(fd, mode, nbytes):
        calls.append(mode)
        if mode == "nb" and calls.count("nb") < 3:
            raise OSError(errno.EACCES, "Permission denied")
    fake = types.SimpleNamespace(LK_NBLCK="nb", LK_UNLCK="un", locking=locking)
    monkeypatch.setattr(check_headers, "fcntl", None)
    monkeypatch.setattr(check_headers, "msvcrt", fake)
    monkeypatch.setattr(check_headers.time, "sleep", lambda s: None)
    check_headers._put_in_place(_tree(tmp_path / "staging", "new"), tmp_path / "1.0")
    assert calls == ["nb", "nb", "nb", "un"]

    calls.clear()
    fake.locking = lambda fd, mode, nbytes: calls.append(mode) or (_ for _ in ()).throw(OSError(errno.EINVAL, "x"))
    check_headers._put_in_place(_tree(tmp_path / "staging2", "new"), tmp_path / "2.0")
    assert calls == ["nb"] and (tmp_path / "2.0" / "include").is_dir()


def test_a_rename_refused_for_a_moment_is_tried_again(tmp_path, monkeypatch):
    real_rename, refused = check_headers.Path.rename, []

    def busy_once(self, target):
        if not refused:
            refused.append(self)
            raise PermissionError(13, "Access is denied")  # an indexer holding a file just extracted
        return real_rename(self, target)
    monkeypatch.setattr(check_headers.Path, "rename", busy_once)
    monkeypatch.setattr(check_headers.time, "sleep", lambda s: None)
    dest = tmp_path / "1.0"
    check_headers._put_in_place(_tree(tmp_path / "staging", "new"), dest)
    assert refused and (dest / "include/sycl/ext/intel/esimd.hpp").read_text() == "new"
