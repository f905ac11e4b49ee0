"""The xmx loader: every way a native binary can be unusable leaves `xmx` unavailable with a reason, and calls
are served by the other backends; the CPU reference (explicitly allowed) serves calls through the router."""
from __future__ import annotations

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

ROOT = Path(__file__).resolve().parents[1]
ENV = ("ARCATTN_XMX_PATH", "ARCATTN_XMX_ALLOW_CPU_REFERENCE", "ARCATTN_XMX_MAX_BATCH", "ARCATTN_XMX_MAX_SEQ",
       "ARCATTN_DISABLE", "ARCATTN_BACKEND")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def cpu_binary() -> Path:
    spec = importlib.util.spec_from_file_location("arcattn_extension_build", ROOT / "extension" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build.build_cpu_reference(quiet=True)


def _fake(tmp_path: Path, body: str, name: str = "_xmx.py") -> Path:
    """A stand-in binary: the loader imports whatever file it is pointed at, so a .py module can play one."""
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return p


FAKE_OK_INFO = '{"abi": 1, "kind": %r, "head_dims": [40, 64], "dtypes": ["float16"]}'


def _fake_module(tmp_path, *, abi=1, kind="cpu-reference", forward="pass", check="''"):
    return _fake(tmp_path, f"""
        def abi_version():
            return {abi}
        def device_info():
            return {FAKE_OK_INFO % kind}
        def check_device(queue):
            return {check}
        def forward(*args):
            {forward}
    """)


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


def test_wrong_abi(tmp_path, rng):
    b = XMXBackend(_fake_module(tmp_path, abi=999), allow_cpu_reference=True)
    why = b.unavailable_reason()
    assert "ABI 999" in why and f"ABI {xmx_mod.ABI_VERSION}" in why
    _served_by_fallback(b, rng)


def test_unknown_kind(tmp_path):
    why = XMXBackend(_fake_module(tmp_path, kind="cuda-something"), allow_cpu_reference=True).unavailable_reason()
    assert "unknown kind" in why


def test_real_kernel_without_an_xpu(tmp_path, rng):
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


def test_wrong_device_reported_by_the_binary(tmp_path, rng, monkeypatch):
    _pretend_xpu(monkeypatch, has_subgroup_matrix_multiply_accumulate=True, has_subgroup_2d_block_io=True)
    path = _fake_module(tmp_path, kind="sycl-esimd",
                        check="'device is intel_gpu_acm_g10; compiled for bmg-g21' if queue == 0xABC else 'queue?'")
    b = XMXBackend(path)
    why = b.unavailable_reason()
    assert "cannot run on this device" in why and "intel_gpu_acm_g10" in why
    monkeypatch.undo()
    _served_by_fallback(b, rng)


def test_wrong_device_without_2d_block_io(tmp_path, monkeypatch):
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
def test_router_serves_through_xmx(cpu_backend, rng, layout, out_layout):
    B, H, Sq, Sk, D = 1, 3, 29, 41, 64
    shape = {"bsd": lambda S: (B, S, H * D), "bhsd": lambda S: (B, H, S, D), "bshd": lambda S: (B, S, H, D)}[layout]
    q, k, v = (torch.randn(shape(S), generator=rng).to(torch.float16) for S in (Sq, Sk, Sk))
    arcattn.set_router(Router([cpu_backend, SDPABackend()]))
    out = arcattn.attention(q, k, v, heads=H, layout=layout, out_layout=out_layout)
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
