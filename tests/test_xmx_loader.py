"""The xmx loader: every way a native binary can be unusable leaves `xmx` unavailable with a reason, and calls
are served by the other backends; the CPU reference (explicitly allowed) serves calls through the router."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import arcattn
from arcattn import Router
from arcattn.backends import create_backends
from arcattn.backends import xmx as xmx_mod
from arcattn.backends.sdpa import SDPABackend
from arcattn.backends.xmx import XMXBackend
from arcattn.call import make_call
from arcattn.reference import attention_reference, rel_error

ENV = ("ARCATTN_XMX_PATH", "ARCATTN_XMX_ALLOW_CPU_REFERENCE", "ARCATTN_XMX_MAX_BATCH", "ARCATTN_XMX_MAX_SEQ",
       "ARCATTN_DISABLE", "ARCATTN_BACKEND")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def _fake(tmp_path: Path, body: str, name: str = "_xmx.py") -> Path:
    """A stand-in binary: the loader imports whatever file it is pointed at, so a .py module can play one."""
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return p


def _fake_module(tmp_path, *, abi=2, kind="cpu-reference", forward="pass", check="''", sycl_major=8, kernels=2,
                 name="_xmx.py"):
    """A stand-in binary. Its device_info() claims head dims 40 and 64 in float16, i.e. 2 kernel instances."""
    info = {"abi": abi, "kind": kind, "head_dims": [40, 64], "dtypes": ["float16"],
            "kernel_name": "ArcattnXmxAttention", "sycl_major": sycl_major if kind == "sycl-esimd" else None,
            "kernels": kernels}
    return _fake(tmp_path, f"""
        def abi_version():
            return {abi}
        def device_info():
            return {info!r}
        def check_device(queue):
            return {check}
        def forward(*args):
            {forward}
    """, name=name)


@pytest.fixture
def torch_runtime(monkeypatch):
    """Set what the loader finds out about torch's SYCL runtime: torch_runtime(8) or torch_runtime(None)."""
    def set_major(major, source="test: libsycl.so.%s is loaded"):
        rt = xmx_mod.SyclRuntime(major, source % major if "%s" in source else source)
        monkeypatch.setattr(xmx_mod, "torch_sycl_runtime", lambda: rt)
        return rt
    set_major(None, "test: nothing found")
    return set_major


def _served_by_fallback(backend: XMXBackend, rng) -> None:
    """With xmx unusable, arcattn.attention still answers (through sdpa) and telemetry says why xmx did not."""
    arcattn.set_router(Router([backend, SDPABackend()]))
    q = torch.randn(1, 20, 2 * 40, generator=rng).to(torch.float16)
    out = arcattn.attention(q, q, q, heads=2)
    c = make_call(q, q, q, heads=2)
    ref, _ = attention_reference(c.q4, c.k4, c.v4)
    assert rel_error(out.view(1, 20, 2, 40).transpose(1, 2), ref) < 2e-3
    t = arcattn.telemetry()
    assert t["xmx"]["available"] is False and t["xmx"]["unavailable_reason"]
    assert t["xmx"]["served"] == 0 and t["sdpa"]["served"] == 1


# -- on this (CPU) machine, out of the box ---------------------------------------------------------------------
def test_default_backend_is_unavailable_here():
    b = XMXBackend()
    why = b.unavailable_reason()
    assert why is not None  # no binary in arcattn/_native, or no XPU, or a CPU reference that is not allowed
    assert "native binary" in why or "XPU" in why


def test_registry_puts_xmx_first_and_routes_around_it(rng):
    backends = create_backends()
    assert backends[0].name == "xmx"
    assert backends[0].unavailable_reason()
    arcattn.set_router(Router(backends))
    q = torch.randn(1, 16, 64, generator=rng)
    arcattn.attention(q, q, q, heads=1)
    t = arcattn.telemetry()
    assert t["xmx"]["served"] == 0 and sum(v["served"] for v in t.values()) == 1


def test_cpu_reference_in_the_package_dir_is_still_refused(tmp_path, cpu_binary):
    # even if someone copied the test build where real binaries go, it is not used without the explicit opt-in
    import shutil
    shutil.copy(cpu_binary, tmp_path / cpu_binary.name)
    why = XMXBackend(tmp_path).unavailable_reason()
    assert "CPU reference build" in why and "ARCATTN_XMX_ALLOW_CPU_REFERENCE" in why


# -- each failure leaves a reason and the fallback serving ------------------------------------------------------
def test_missing_binary_path(tmp_path, rng, monkeypatch):
    monkeypatch.setenv("ARCATTN_XMX_PATH", str(tmp_path / "nowhere" / "_xmx.so"))
    b = XMXBackend()
    assert "does not exist" in b.unavailable_reason()
    _served_by_fallback(b, rng)


def test_empty_directory(tmp_path, rng):
    b = XMXBackend(tmp_path)
    assert "no native binary" in b.unavailable_reason()
    _served_by_fallback(b, rng)


def test_binary_for_another_python(tmp_path):
    (tmp_path / "_xmx.cpython-399-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    why = XMXBackend(tmp_path).unavailable_reason()
    assert "no native binary for this Python" in why and "cpython-399" in why


@pytest.mark.parametrize("xpu_present", [False, True])
def test_corrupt_binary(tmp_path, rng, caplog, monkeypatch, xpu_present):
    suffix = xmx_mod._suffixes()[0]
    (tmp_path / ("_xmx" + suffix)).write_bytes(b"not a shared object" * 10)
    monkeypatch.setattr(xmx_mod, "_has_xpu", lambda: xpu_present)
    b = XMXBackend(tmp_path)
    with caplog.at_level(logging.WARNING, logger="arcattn"):
        why = b.unavailable_reason()
    assert "failed to load" in why
    # a user with an Arc GPU is told; a machine without one (where a SYCL binary cannot load anyway) is not
    assert any("xmx backend unavailable" in r.message for r in caplog.records) == xpu_present
    _served_by_fallback(b, rng)


def test_binary_for_a_newer_runtime_gets_a_hint(tmp_path, monkeypatch):
    """The loader's words when torch's libsycl of the right major is older than the binary's oneAPI (the import
    fails on a missing SYCL symbol, as measured with the real 2025.2.2 runtime, tests/test_xmx_runtime.py)."""
    suffix = xmx_mod._suffixes()[0]
    (tmp_path / f"_xmx.sycl8{suffix}").write_bytes(b"\x7fELF")
    monkeypatch.setattr(xmx_mod, "_has_xpu", lambda: True)
    monkeypatch.setattr(xmx_mod, "torch_sycl_runtime", lambda: xmx_mod.SyclRuntime(8, "libsycl.so.8 is loaded"))

    def load(path, error=ImportError(f"{tmp_path}/_xmx.sycl8{suffix}: undefined symbol: "
                                     "_ZNK4sycl3_V15queue22submit_with_event_implERKNS0_6detail19type_erased")):
        raise error
    monkeypatch.setattr(xmx_mod, "load_module", load)
    why = XMXBackend(tmp_path).unavailable_reason()
    assert "failed to load: ImportError" in why and "torch uses SYCL runtime 8" in why
    assert why.endswith(xmx_mod.OLDER_RUNTIME_HINT)
    monkeypatch.setattr(xmx_mod, "load_module", lambda path: load(path, ImportError("libsycl.so.8: cannot open")))
    assert xmx_mod.OLDER_RUNTIME_HINT not in XMXBackend(tmp_path).unavailable_reason()  # other failures: no hint
    python_symbol = ImportError(f"{tmp_path}/_xmx.sycl8{suffix}: undefined symbol: PyUnicode_AsUTF8AndSize")
    monkeypatch.setattr(xmx_mod, "load_module", lambda path: load(path, python_symbol))
    assert xmx_mod.OLDER_RUNTIME_HINT not in XMXBackend(tmp_path).unavailable_reason()  # not a SYCL symbol


def test_wrong_abi(tmp_path, rng):
    b = XMXBackend(_fake_module(tmp_path, abi=999), allow_cpu_reference=True)
    why = b.unavailable_reason()
    assert "ABI 999" in why and f"ABI {xmx_mod.ABI_VERSION}" in why
    _served_by_fallback(b, rng)


def test_unknown_kind(tmp_path):
    why = XMXBackend(_fake_module(tmp_path, kind="cuda-something"), allow_cpu_reference=True).unavailable_reason()
    assert "unknown kind" in why


def test_real_kernel_without_an_xpu(tmp_path, rng, torch_runtime):
    b = XMXBackend(_fake_module(tmp_path, kind="sycl-esimd"))
    assert "no Intel XPU" in b.unavailable_reason()
    _served_by_fallback(b, rng)


def _pretend_xpu(monkeypatch, **props):
    fake = SimpleNamespace(
        is_available=lambda: True,
        get_device_properties=lambda *a: SimpleNamespace(name="Intel(R) Arc(TM) A770 Graphics", **props),
        current_stream=lambda *a: SimpleNamespace(sycl_queue=0xABC),
        current_device=lambda: 0,
    )
    monkeypatch.setattr(torch, "xpu", fake, raising=False)


def test_wrong_device_reported_by_the_binary(tmp_path, rng, monkeypatch, torch_runtime):
    _pretend_xpu(monkeypatch, has_subgroup_matrix_multiply_accumulate=True, has_subgroup_2d_block_io=True)
    path = _fake_module(tmp_path, kind="sycl-esimd",
                        check="'device is intel_gpu_acm_g10; compiled for bmg-g21' if queue == 0xABC else 'queue?'")
    b = XMXBackend(path)
    why = b.unavailable_reason()
    assert "cannot run on this device" in why and "intel_gpu_acm_g10" in why
    monkeypatch.undo()
    _served_by_fallback(b, rng)


def test_wrong_device_without_2d_block_io(tmp_path, monkeypatch, torch_runtime):
    _pretend_xpu(monkeypatch, has_subgroup_matrix_multiply_accumulate=True, has_subgroup_2d_block_io=False)
    why = XMXBackend(_fake_module(tmp_path, kind="sycl-esimd")).unavailable_reason()
    assert "2-D block I/O" in why and "not an Xe2 GPU" in why


def test_self_test_catches_an_output_never_written(tmp_path, rng):
    b = XMXBackend(_fake_module(tmp_path, forward="pass"), allow_cpu_reference=True)
    why = b.unavailable_reason()
    assert why.startswith("self-test failed") and "inf" in why  # NaN poison left in place
    _served_by_fallback(b, rng)


def test_self_test_catches_a_raising_kernel(tmp_path, rng):
    b = XMXBackend(_fake_module(tmp_path, forward="raise RuntimeError('device lost')"), allow_cpu_reference=True)
    why = b.unavailable_reason()
    assert why.startswith("self-test raised") and "device lost" in why
    _served_by_fallback(b, rng)


def test_self_test_catches_a_subtly_wrong_kernel(tmp_path, cpu_binary, rng):
    """A binary that is right except for its softmax scale (a typical folding bug) must not pass."""
    path = _fake(tmp_path, f"""
        import importlib.util
        _spec = importlib.util.spec_from_file_location("_xmx", {str(cpu_binary)!r})
        _real = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_real)
        abi_version, device_info, check_device = _real.abi_version, _real.device_info, _real.check_device
        def forward(*args):
            args = list(args)
            args[14] = args[14] * 1.25
            _real.forward(*args)
    """)
    b = XMXBackend(path, allow_cpu_reference=True)
    assert b.unavailable_reason().startswith("self-test failed")
    _served_by_fallback(b, rng)


def _wrapping_fake(tmp_path, cpu_binary, body: str) -> Path:
    """A stand-in that delegates to the CPU reference build except where `body` (the text of forward) says."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    head = textwrap.dedent(f"""\
        import importlib.util
        _spec = importlib.util.spec_from_file_location("_xmx", {str(cpu_binary)!r})
        _real = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_real)
        abi_version, device_info, check_device = _real.abi_version, _real.device_info, _real.check_device
        calls = []
        def forward(*args):
            calls.append(args)
        """)
    return _fake(tmp_path, head + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ") + "\n")


def test_self_test_runs_the_row_shifted_surface_case(tmp_path, cpu_binary):
    """The self-test runs contiguous (B, H, S, D) at D = 40 with Sk = 77, whose head 1 starts 16 bytes past a
    64-byte boundary: the kernel's y0 > 0 surface path. A binary wrong only there must fail it."""
    ok = XMXBackend(_wrapping_fake(tmp_path / "ok", cpu_binary, "_real.forward(*args)"), allow_cpu_reference=True)
    assert ok.unavailable_reason() is None
    B, H, Sq, Sk = (xmx_mod.SELFTEST_SHAPE[k] for k in ("B", "H", "Sq", "Sk"))
    contiguous_k = (H * Sk * 40, Sk * 40, 40, 1)
    shifted = [a for a in ok._mod.calls if a[9] == 40 and tuple(a[11]) == contiguous_k]
    assert len(shifted) == len(ok.dtypes) == 2  # once per dtype
    for a in shifted:  # and those inputs really take the row-shifted path for head 1
        for ptr, strides, rows in ((a[1], a[11], Sk), (a[0], a[10], Sq), (a[3], a[13], Sq)):
            assert ok._mod._real.head_surface(ptr, strides, 0, 1, rows, 40)["y0"] > 0
    wrong = XMXBackend(_wrapping_fake(tmp_path / "wrong", cpu_binary, f"""
        if not (args[9] == 40 and tuple(args[11]) == {contiguous_k!r}):
            _real.forward(*args)  # the row-shifted case is left unwritten (NaN)
    """), allow_cpu_reference=True)
    why = wrong.unavailable_reason()
    assert why.startswith("self-test failed") and "D=40" in why and "bhsd" in why


# -- SYCL runtime: which one torch uses, and binaries built for another -------------------------------------------
@pytest.mark.parametrize("name,major", [("libsycl.so.8", 8), ("libsycl.so.9.0.0", 9), ("sycl8.dll", 8),
                                        ("SYCL9.DLL", 9), ("libsycl-preview.so.8", None), ("sycl.dll", None),
                                        ("libsycl.so", None), ("sycl8d.dll", None), ("libur_loader.so.0", None)])
def test_sycl_library_names(name, major):
    assert xmx_mod.sycl_major_of_library(name) == major


def _no_runtime_sources(monkeypatch, loaded=(), dist_version=None, dist_files=None):
    monkeypatch.setattr(xmx_mod, "loaded_library_paths", lambda: list(loaded))
    monkeypatch.setattr(xmx_mod, "torch", SimpleNamespace(__file__="/nonexistent/torch/__init__.py",
                                                          version=SimpleNamespace(xpu="20250302")))

    def version(name):
        if name != xmx_mod.SYCL_RUNTIME_DIST or dist_version is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return dist_version

    monkeypatch.setattr(xmx_mod.importlib.metadata, "version", version)
    monkeypatch.setattr(xmx_mod.importlib.metadata, "files", lambda name: dist_files)


def test_torch_sycl_runtime_from_the_loaded_library(monkeypatch):
    _no_runtime_sources(monkeypatch, loaded=["/usr/lib/x86_64-linux-gnu/libc.so.6",
                                             "/venv/lib/libsycl.so.8", "/venv/lib/libur_loader.so.0"],
                        dist_version="2026.0.0")
    rt = xmx_mod.torch_sycl_runtime()
    assert rt.major == 8 and "/venv/lib/libsycl.so.8 is loaded" in rt.source  # what is loaded beats the metadata


def test_torch_sycl_runtime_from_the_wheel(monkeypatch):
    # file names as the real wheel's installed RECORD lists them (intel-sycl-rt 2025.3.3 in a Linux venv: the
    # libraries go to <venv>/lib, two levels above site-packages), the look-alikes included
    record = ["../../__pycache__/libsycl.so.8.0.0-gdb.cpython-311.pyc", "../../libsycl-jit.so.21.1",
              "../../libsycl-preview.so.8", "../../libsycl.so", "../../libsycl.so.8", "../../libsycl.so.8.0.0",
              "../../libsycl.so.8.0.0-gdb.py", "intel_sycl_rt-2025.3.3.dist-info/RECORD"]
    _no_runtime_sources(monkeypatch, dist_version="2025.3.3", dist_files=record)
    rt = xmx_mod.torch_sycl_runtime()
    assert rt.major == 8 and "intel-sycl-rt 2025.3.3 installs libsycl.so.8" in rt.source
    # the Windows wheel puts sycl9.dll in <venv>\Library\bin
    _no_runtime_sources(monkeypatch, dist_version="2026.0.0", dist_files=["../../Library/bin/sycl9.dll"])
    assert xmx_mod.torch_sycl_runtime().major == 9
    _no_runtime_sources(monkeypatch, dist_version="2026.0.0", dist_files=None)  # no RECORD: the release year
    assert xmx_mod.torch_sycl_runtime().major == 9


def test_torch_sycl_runtime_with_two_loaded_runtimes_falls_through(monkeypatch):
    _no_runtime_sources(monkeypatch, loaded=["/a/libsycl.so.8", "/b/libsycl.so.9"], dist_version="2025.3.2")
    rt = xmx_mod.torch_sycl_runtime()
    assert rt.major == 8 and "intel-sycl-rt 2025.3.2" in rt.source
    _no_runtime_sources(monkeypatch, loaded=["/a/libsycl.so.8", "/b/libsycl.so.9"])
    rt = xmx_mod.torch_sycl_runtime()
    assert rt.major is None and "[8, 9] are all loaded" in rt.source


def test_torch_sycl_runtime_undeterminable(monkeypatch):
    _no_runtime_sources(monkeypatch, dist_version="2031.0.0")
    rt = xmx_mod.torch_sycl_runtime()
    assert rt.major is None
    for part in ("no libsycl.so.N / syclN.dll is loaded", "torch/lib", "intel-sycl-rt 2031.0.0",
                 "torch.version.xpu = 20250302"):
        assert part in rt.source


def test_torch_sycl_runtime_on_this_machine():
    """Whatever this machine has, the answer is well-formed (CPU torch here: nothing loaded, so None)."""
    rt = xmx_mod.torch_sycl_runtime()
    assert rt.major is None or rt.major >= 7
    assert rt.source


def _files(tmp_path, *names):
    for n in names:
        (tmp_path / n).write_bytes(b"\x7fELF")


def test_find_binary_picks_the_one_for_torchs_sycl_runtime(tmp_path):
    sfx = xmx_mod._suffixes()[0]
    _files(tmp_path, f"_xmx.sycl8{sfx}", f"_xmx.sycl9{sfx}", "_xmx.sycl9.cpython-399-x86_64-linux-gnu.so")
    assert xmx_mod.find_binary(tmp_path, 8) == (tmp_path / f"_xmx.sycl8{sfx}", None)
    assert xmx_mod.find_binary(tmp_path, 9) == (tmp_path / f"_xmx.sycl9{sfx}", None)
    path, why = xmx_mod.find_binary(tmp_path, 7)
    assert path is None and "torch's (SYCL runtime 7)" in why and f"_xmx.sycl7{sfx}" in why
    path, why = xmx_mod.find_binary(tmp_path, None)  # unknown runtime and two candidates: no guessing
    assert path is None and "could not be determined" in why and "ARCATTN_XMX_PATH" in why


def test_find_binary_with_one_or_untagged_binaries(tmp_path):
    sfx = xmx_mod._suffixes()[0]
    _files(tmp_path, f"_xmx.sycl9{sfx}")
    assert xmx_mod.find_binary(tmp_path, None)[0] == tmp_path / f"_xmx.sycl9{sfx}"  # one candidate: checked later
    _files(tmp_path, f"_xmx{sfx}")
    assert xmx_mod.find_binary(tmp_path, 8)[0] == tmp_path / f"_xmx{sfx}"  # untagged: its device_info decides
    assert xmx_mod.find_binary(tmp_path, 9)[0] == tmp_path / f"_xmx.sycl9{sfx}"


def test_sycl_esimd_binary_for_another_runtime_is_refused(tmp_path, rng, monkeypatch, torch_runtime, caplog):
    """The binary says SYCL 9, torch loaded SYCL 8: refused with both numbers and where torch's came from, before
    the binary ever sees torch's queue."""
    torch_runtime(8)
    _pretend_xpu(monkeypatch, has_subgroup_matrix_multiply_accumulate=True, has_subgroup_2d_block_io=True)
    path = _fake_module(tmp_path, kind="sycl-esimd", sycl_major=9, check="(_ for _ in ()).throw(AssertionError)")
    b = XMXBackend(path)
    with caplog.at_level(logging.WARNING, logger="arcattn"):
        why = b.unavailable_reason()
    assert "built against SYCL runtime 9" in why and "torch uses SYCL runtime 8" in why
    assert "libsycl.so.8 is loaded" in why and f"_xmx.sycl8{xmx_mod._suffixes()[0]}" in why
    assert "xmx backend unavailable" in caplog.text  # a user with an Arc GPU is told
    assert b.details()["sycl_runtime"]["torch"] == 8
    monkeypatch.undo()
    _served_by_fallback(b, rng)


def test_tagged_binary_for_another_runtime_is_not_even_imported(tmp_path, torch_runtime):
    torch_runtime(9)
    path = _fake(tmp_path, "raise AssertionError('imported')", name="_xmx.sycl8.py")
    why = XMXBackend(path).unavailable_reason()
    assert "built against SYCL runtime 8" in why and "torch uses SYCL runtime 9" in why


def test_directory_with_only_other_runtimes(tmp_path, torch_runtime, caplog):
    torch_runtime(9)
    _files(tmp_path, f"_xmx.sycl8{xmx_mod._suffixes()[0]}")
    with caplog.at_level(logging.WARNING, logger="arcattn"):
        why = XMXBackend(tmp_path).unavailable_reason()
    assert "other SYCL runtimes than torch's (SYCL runtime 9)" in why
    assert "xmx backend unavailable" in caplog.text


def test_matching_sycl_runtime_passes_the_check(tmp_path, monkeypatch, torch_runtime):
    torch_runtime(8)
    _pretend_xpu(monkeypatch, has_subgroup_matrix_multiply_accumulate=True, has_subgroup_2d_block_io=True)
    monkeypatch.setattr(XMXBackend, "self_test", lambda self: None)  # no XPU tensors on this machine
    b = XMXBackend(_fake_module(tmp_path, kind="sycl-esimd", sycl_major=8))
    assert b.unavailable_reason() is None and b.kind == "sycl-esimd"
    assert b.details()["sycl_runtime"] == {"torch": 8, "source": "test: libsycl.so.8 is loaded", "binary": 8,
                                           "note": None}


def test_undeterminable_torch_runtime_is_noted_not_refused(tmp_path, monkeypatch, torch_runtime, caplog):
    """When torch's SYCL runtime cannot be found out, the binary is used (it may well be right), the fact is logged
    once per process, and doctor's details, the description and any later reason carry it."""
    torch_runtime(None, "test: nothing found")
    _pretend_xpu(monkeypatch, has_subgroup_matrix_multiply_accumulate=True, has_subgroup_2d_block_io=True)
    monkeypatch.setattr(XMXBackend, "self_test", lambda self: None)
    monkeypatch.setattr(xmx_mod, "_unknown_runtime_logged", set())
    with caplog.at_level(logging.WARNING, logger="arcattn"):
        first = XMXBackend(_fake_module(tmp_path, kind="sycl-esimd", sycl_major=8))
        assert first.unavailable_reason() is None
        second = XMXBackend(_fake_module(tmp_path, kind="sycl-esimd", sycl_major=8))
        assert second.unavailable_reason() is None
    notes = [r.message for r in caplog.records if "could not be determined" in r.message]
    assert len(notes) == 1 and "test: nothing found" in notes[0] and "SYCL runtime 8" in notes[0]
    assert "could not be determined" in first.details()["sycl_runtime"]["note"]
    assert "could not be determined" in first.description
    assert "could not be determined" not in XMXBackend.description  # the class is untouched
    # refused later for another reason: the reason carries the note too
    third = XMXBackend(_fake_module(tmp_path, kind="sycl-esimd", check="'device is intel_gpu_acm_g10'"))
    why = third.unavailable_reason()
    assert "intel_gpu_acm_g10" in why and "[note: torch's SYCL runtime could not be determined" in why


def test_sycl_esimd_binary_that_does_not_name_its_runtime(tmp_path, monkeypatch, torch_runtime):
    torch_runtime(8)
    _pretend_xpu(monkeypatch, has_subgroup_matrix_multiply_accumulate=True, has_subgroup_2d_block_io=True)
    why = XMXBackend(_fake_module(tmp_path, kind="sycl-esimd", sycl_major=None)).unavailable_reason()
    assert "does not say which SYCL runtime" in why


@pytest.mark.parametrize("kernels", [0, 1, -1, None])
def test_sycl_esimd_binary_with_missing_kernels(tmp_path, monkeypatch, torch_runtime, kernels):
    """A link that dropped the device image (Windows without Ninja) still imports and describes itself; its kernel
    count gives it away."""
    torch_runtime(8)
    _pretend_xpu(monkeypatch, has_subgroup_matrix_multiply_accumulate=True, has_subgroup_2d_block_io=True)
    why = XMXBackend(_fake_module(tmp_path, kind="sycl-esimd", kernels=kernels)).unavailable_reason()
    if kernels == -1:
        assert "failed to list its kernels" in why
    else:
        assert f"{kernels!r} of its 2 kernels" in why and "device code is missing" in why


def test_cpu_reference_reports_all_its_kernels(cpu_binary):
    info = xmx_mod.load_module(cpu_binary).device_info()
    assert info["kernels"] == len(info["head_dims"]) * len(info["dtypes"]) == 10
    assert info["sycl_major"] is None and info["sycl_version"] is None
    assert XMXBackend(cpu_binary, allow_cpu_reference=True).unavailable_reason() is None


def test_cpu_reference_with_a_wrong_kernel_count_is_refused(tmp_path):
    why = XMXBackend(_fake_module(tmp_path, kernels=3), allow_cpu_reference=True).unavailable_reason()
    assert "3 of its 2 kernels" in why


# -- the CPU reference, allowed, through the router -------------------------------------------------------------
@pytest.fixture
def cpu_backend(cpu_binary):
    b = XMXBackend(cpu_binary, allow_cpu_reference=True)
    assert b.unavailable_reason() is None
    return b


def test_allowed_by_environment(cpu_binary, monkeypatch):
    monkeypatch.setenv("ARCATTN_XMX_ALLOW_CPU_REFERENCE", "1")
    monkeypatch.setenv("ARCATTN_XMX_PATH", str(cpu_binary.parent))
    b = XMXBackend()
    assert b.unavailable_reason() is None and b.kind == "cpu-reference"
    assert b.details()["path"] == str(cpu_binary)


@pytest.mark.parametrize("layout,out_layout", [("bsd", "bsd"), ("bhsd", "bhsd"), ("bshd", "bshd"), ("bsd", "bhsd"),
                                               ("bhsd", "bsd")])
def test_router_serves_through_xmx(cpu_backend, rng, monkeypatch, layout, out_layout):
    B, H, Sq, Sk, D = 1, 3, 29, 41, 64
    shape = {"bsd": lambda S: (B, S, H * D), "bhsd": lambda S: (B, H, S, D), "bshd": lambda S: (B, S, H, D)}[layout]
    q, k, v = (torch.randn(shape(S), generator=rng).to(torch.float16) for S in (Sq, Sk, Sk))
    arcattn.set_router(Router([cpu_backend, SDPABackend()]))
    real_empty, real_mod, forwards = torch.empty, cpu_backend._mod, []

    class Spy:  # the answer must come from the binary's forward, into an output it had to fill
        def __getattr__(self, name):
            return getattr(real_mod, name)

        def forward(self, *a):
            forwards.append(a)
            return real_mod.forward(*a)
    monkeypatch.setattr(cpu_backend, "_mod", Spy())
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: real_empty(*a, **kw).fill_(float("nan")))
    out = arcattn.attention(q, k, v, heads=H, layout=layout, out_layout=out_layout)
    monkeypatch.setattr(torch, "empty", real_empty)
    assert len(forwards) == 1
    c = make_call(q, k, v, heads=H, layout=layout, out_layout=out_layout)
    ref, _ = attention_reference(c.q4, c.k4, c.v4)
    got = make_call(out, out, out, heads=H, layout=out_layout).q4
    assert rel_error(got, ref) < 1.5e-3
    assert arcattn.telemetry()["xmx"]["served"] == 1


def test_declines_with_reasons(cpu_backend, rng):
    q = torch.randn(1, 2, 16, 64, generator=rng).to(torch.float16)

    def reasons(*args, **kw):
        return "; ".join(cpu_backend.unsupported_reasons(make_call(*args, **kw)))

    assert "mask" in reasons(q, q, q, mask=torch.ones(16, 16, dtype=torch.bool))
    assert "causal" in reasons(q, q, q, causal=True)
    assert "log-sum-exp" in reasons(q, q, q, want_lse=True)
    assert "dtype float32" in reasons(q.float(), q.float(), q.float())
    q72 = torch.randn(1, 2, 16, 72, generator=rng).to(torch.float16)
    assert "head dim 72 not compiled" in reasons(q72, q72, q72)
    v32 = torch.randn(1, 2, 16, 32, generator=rng).to(torch.float16)
    assert "value head dim 32" in reasons(q, q, v32)
    qt = torch.randn(1, 2, 64, 16, generator=rng).to(torch.float16).transpose(-1, -2)
    assert "unit stride" in reasons(qt, q, q)
    assert "batch 2 > 1" in reasons(*(torch.randn(2, 2, 16, 64).half(),) * 3)
    long = torch.randn(1, 1, 2049, 64).half()
    assert "sequence 2049 > 2048" in reasons(long, long, long)
    assert reasons(q, q, q) == ""


def test_limits_from_environment(cpu_binary, monkeypatch, caplog):
    monkeypatch.setenv("ARCATTN_XMX_MAX_BATCH", "4")
    monkeypatch.setenv("ARCATTN_XMX_MAX_SEQ", "0")  # no limit
    b = XMXBackend(cpu_binary, allow_cpu_reference=True)
    assert (b.max_batch, b.max_seq) == (4, None) and b.unavailable_reason() is None
    big = torch.randn(3, 1, 4096, 40).half()
    assert b.unsupported_reasons(make_call(big, big, big)) == []
    monkeypatch.setenv("ARCATTN_XMX_MAX_SEQ", "lots")
    with caplog.at_level(logging.WARNING, logger="arcattn"):
        b = XMXBackend(cpu_binary, allow_cpu_reference=True)
    assert b.max_seq == xmx_mod.DEFAULT_MAX_SEQ and "ARCATTN_XMX_MAX_SEQ" in caplog.text
    assert XMXBackend(cpu_binary, max_batch=2, max_seq=64).max_seq == 64


def test_a_stride_the_kernel_cannot_take_falls_back(cpu_backend, rng, caplog):
    """88-byte rows pass the signature checks but not the binary's per-call surface check: the router must log,
    mark the signature broken and serve it through sdpa."""
    q = torch.randn(1, 2, 16, 44, generator=rng).to(torch.float16)[..., :40]
    arcattn.set_router(Router([cpu_backend, SDPABackend()]))
    with caplog.at_level(logging.WARNING, logger="arcattn"):
        out = arcattn.attention(q, q, q)
        arcattn.attention(q, q, q)
    ref, _ = attention_reference(q, q, q)
    assert rel_error(out, ref) < 2e-3
    t = arcattn.telemetry()
    assert sum(t["xmx"]["failed"].values()) == 1 and t["sdpa"]["served"] == 2
    assert "multiple of 16" in caplog.text
