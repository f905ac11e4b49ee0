"""The SYCL/ESIMD kernel source against Intel's real SYCL headers (extension/check_headers.py).

Needs clang++ and the include/ trees of the intel-sycl-rt wheels (fetched once into the cache, about 170 MB each
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
