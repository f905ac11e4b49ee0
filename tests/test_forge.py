"""Forge adapter and extension script against stand-ins with Forge's signatures (tests/standins/forge).

The real Forge checkout is covered by tests/test_forge_real.py (ARCATTN_FORGE_ROOT)."""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import types

import pytest
import torch

import arcattn
from arcattn.backends import NAMES
from arcattn.hosts import forge
from arcattn.reference import attention_reference, rel_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANDINS = os.path.join(ROOT, "tests", "standins", "forge")
REFORGE = os.path.join(STANDINS, "reforge")
SCRIPT = os.path.join(ROOT, "scripts", "arcattn_forge.py")
HOST_PACKAGES = ("backend", "modules", "gradio", "ldm_patched")


def _host_modules():
    return {k: v for k, v in sys.modules.items() if k.split(".")[0] in HOST_PACKAGES}


@pytest.fixture
def forge_version():
    """Which Forge the stand-in's backend/attention.py is (ARCATTN_STANDIN_FORGE): tests that hold for both
    parametrize it with BOTH."""
    return "forge"


BOTH = pytest.mark.parametrize("forge_version", ["forge", "neo"])


@pytest.fixture
def host(monkeypatch, forge_version):
    """Puts a stand-in root on sys.path; afterwards uninstalls arcattn and forgets every stand-in module."""
    monkeypatch.setenv("ARCATTN_STANDIN_FORGE", forge_version)
    saved = _host_modules()
    for k in saved:
        del sys.modules[k]
    added = []

    def use(root):
        sys.path.insert(0, root)
        added.append(root)

    yield use
    forge.uninstall()
    forge.set_generation(True, None)
    for k in _host_modules():
        del sys.modules[k]
    sys.modules.update(saved)
    for root in added:
        sys.path.remove(root)


def _randomize(module, rng):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=rng) * p.shape[-1] ** -0.5)
    return module


def _served():
    return {name: v["served"] for name, v in arcattn.telemetry().items()}


def _cross_attention_ref(attn, x, context, heads, mask=None):
    """float64 CrossAttention output: the module's projections around the reference attention."""
    lin = torch.nn.functional.linear
    q, k, v = (lin(t, m.weight.double()) for t, m in ((x, attn.to_q), (context, attn.to_k), (context, attn.to_v)))
    B, Sq, HD = q.shape
    D = HD // heads
    q4, k4, v4 = (t.view(B, -1, heads, D).transpose(1, 2) for t in (q, k, v))
    out4, _ = attention_reference(q4, k4, v4, mask=mask)
    out = out4.transpose(1, 2).reshape(B, Sq, HD)
    return torch.nn.functional.linear(out, attn.to_out[0].weight.double(), attn.to_out[0].bias.double())


# -- install / uninstall ------------------------------------------------------------------------------------
@BOTH
def test_install_rebinds_every_copy_and_uninstall_restores(host):
    host(STANDINS)
    import backend.attention as A
    import backend.nn.flux as FL
    import backend.nn.llm.llama as LLM
    import backend.nn.t5 as T5
    import backend.nn.unet as U
    original = A.attention_function
    assert U.attention_function is original and FL.attention_function is original
    assert LLM.attention_function is original  # attention_pytorch, which is also the host's choice here

    sites = forge.install()
    w = A.attention_function
    assert isinstance(w, forge.ForgeAttention) and w.original is original
    assert U.attention_function is w and FL.attention_function is w
    assert T5.attention_function is A.attention_pytorch  # the text encoders keep their own SDPA on purpose
    assert LLM.attention_function is A.attention_pytorch
    assert {"backend.attention.attention_function", "backend.nn.unet.attention_function",
            "backend.nn.flux.attention_function"} <= set(sites)
    assert forge.layouts() == ["forge"]

    assert forge.install() == []  # idempotent: nothing left to rebind
    assert A.attention_function is w and w.original is original  # never wrapped twice

    restored = forge.uninstall()
    assert A.attention_function is original and U.attention_function is original
    assert FL.attention_function is original and T5.attention_function is A.attention_pytorch
    assert len(restored) == 3 and not forge.installed()


@BOTH
def test_modules_imported_after_install_get_the_wrapper_and_are_restored(host):
    host(STANDINS)
    import backend.attention as A
    original = A.attention_function
    forge.install()
    import backend.nn.unet as U  # imported late: its `from backend.attention import ...` copies the wrapper
    assert U.attention_function is A.attention_function is forge.wrappers()[0]
    forge.uninstall()
    assert U.attention_function is original


def test_install_leaves_lazy_modules_unloaded(host, tmp_path, monkeypatch):
    """Finding the copies reads no module attribute: a lazily loaded module (importlib.util.LazyLoader) stays
    unloaded, and one whose deferred import would fail does not stop the install."""
    import importlib.util
    host(STANDINS)
    import backend.attention as A
    (tmp_path / "forge_lazy_broken_mod.py").write_text("import no_such_module_anywhere\n")
    host(str(tmp_path))  # the fixture takes it off sys.path again (monkeypatch's syspath_prepend would put back
    #                      the stand-in root, which the fixture removes before monkeypatch undoes)
    spec = importlib.util.find_spec("forge_lazy_broken_mod")
    spec.loader = importlib.util.LazyLoader(spec.loader)
    lazy = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "forge_lazy_broken_mod", lazy)
    spec.loader.exec_module(lazy)
    original = A.attention_function
    assert "backend.attention.attention_function" in forge.install()
    forge.uninstall()
    assert A.attention_function is original and type(lazy).__name__ == "_LazyModule"


def test_no_forge_installs_nothing(host):
    assert forge.install() == [] and not forge.installed() and forge.layouts() == []


@pytest.mark.parametrize("impl,factor", [("pytorch", 1.28), ("basic", 1.65)])
def test_memory_estimate_factor_is_unchanged(host, monkeypatch, impl, factor):
    monkeypatch.setenv("ARCATTN_STANDIN_FORGE_ATTENTION", impl)
    host(STANDINS)
    from backend.modules import k_model
    assert k_model.memory_factor() == factor
    forge.install()
    assert k_model.memory_factor() == factor  # the wrapper counts as the host's own choice
    forge.set_generation(False)
    assert k_model.memory_factor() == factor


# -- calls --------------------------------------------------------------------------------------------------
@BOTH
def test_cross_attention_routes_through_arcattn(host, rng):
    host(STANDINS)
    import backend.nn.unet as U
    attn = _randomize(U.CrossAttention(query_dim=48, context_dim=40, heads=3, dim_head=16), rng).eval()
    attn_self = _randomize(U.CrossAttention(query_dim=48, heads=3, dim_head=16), rng).eval()
    x = torch.randn(2, 37, 48, generator=rng)
    ctx = torch.randn(2, 11, 40, generator=rng)
    with torch.no_grad():
        ref = _cross_attention_ref(attn, x.double(), ctx.double(), 3)
        host_out = attn(x, context=ctx)
        forge.install()
        counter = forge.GenerationCounter()
        counter.start()
        before = _served()
        out = attn(x, context=ctx)
        self_out = attn_self(x)
    assert rel_error(host_out, ref) < 1e-5
    assert rel_error(out, ref) < 1e-5
    self_ref = _cross_attention_ref(attn_self, x.double(), x.double(), 3)
    assert rel_error(self_out, self_ref) < 1e-5
    after = _served()
    served = {n: after[n] - before[n] for n in after if after[n] > before[n]}
    assert sum(served.values()) == 2, served
    assert counter.counts() == served
    assert counter.label() == max(served, key=served.get) and counter.label() in NAMES


@BOTH
def test_disabled_hands_calls_to_the_host_untouched(host, rng):
    host(STANDINS)
    import backend.attention as A
    import backend.nn.unet as U
    original = A.attention_function
    forge.install()
    forge.set_generation(False, "auto")
    q, k, v = (torch.randn(2, n, 64, generator=rng) for n in (21, 9, 9))
    counter = forge.GenerationCounter()
    counter.start()
    before = _served()
    out = U.attention_function(q, k, v, 4, None)
    assert torch.equal(out, original(q, k, v, 4, None))
    assert _served() == before
    assert counter.label(enabled=False) == "off" and counter.label() == "unused"
    forge.set_generation(True)
    U.attention_function(q, k, v, 4, None)
    assert _served() != before


@BOTH
def test_preferred_backend_and_unknown_name(host, rng, caplog, forge_version):
    host(STANDINS)
    import backend.nn.unet as U
    forge.install()
    forge.set_generation(True, "sdpa")
    assert forge.generation_settings() == (True, "sdpa")
    q, k, v = (torch.randn(1, 16, 32, generator=rng) for _ in range(3))
    before = _served()
    U.attention_function(q, k, v, 2)
    assert _served()["sdpa"] == before["sdpa"] + 1
    with caplog.at_level(logging.WARNING, logger="arcattn"):
        forge.set_generation(True, f"no-such-backend-{forge_version}")  # each unknown name is logged once
    assert forge.generation_settings() == (True, None)
    assert "unknown backend" in caplog.text


def test_generation_backend_and_counter_follow_each_generation(host, rng):
    """The accordion's backend reaches every wrapper; each generation's counter starts from its own baseline and
    its label names the backend that served most of its calls."""
    from arcattn.backends.sdpa import SDPABackend
    from arcattn.dispatch import Router

    class Rec(SDPABackend):  # a fast-path stand-in the router prefers over sdpa
        name, is_fallback = "triton", False
    arcattn.set_router(Router([Rec(), SDPABackend()], disabled=(), prefer=""))
    host(STANDINS)
    import backend.nn.unet as U
    forge.install()
    q, k, v = (torch.randn(1, 16, 32, generator=rng) for _ in range(3))

    def generation(calls):
        counter = forge.GenerationCounter()
        counter.start()
        for n in calls:
            forge.set_generation(True, n)
            U.attention_function(q, k, v, 2)
        return counter.counts(), counter.label()
    assert generation(["auto", "auto", "sdpa"]) == ({"triton": 2, "sdpa": 1}, "triton")
    assert generation(["sdpa", "sdpa", "auto"]) == ({"sdpa": 2, "triton": 1}, "sdpa")


@BOTH
def test_flux_skip_reshape_layout(host, rng):
    host(STANDINS)
    import backend.nn.flux as FL
    forge.install()
    B, H, N, D = 1, 2, 24, 32
    q, k, v = (torch.randn(B, H, N, D, generator=rng) for _ in range(3))
    pe = FL.rope_freqs(N, D)
    out = FL.attention(q, k, v, pe)
    assert out.shape == (B, N, H * D)
    qr, kr = FL.apply_rope(q, k, pe)
    ref4, _ = attention_reference(qr, kr, v)
    assert rel_error(out, ref4.transpose(1, 2).reshape(B, N, H * D)) < 1e-5


@BOTH
def test_arcattn_failure_falls_back_to_the_host(host, rng, monkeypatch):
    host(STANDINS)
    import backend.attention as A
    import backend.nn.unet as U
    original = A.attention_function
    forge.install()

    class Broken:
        def run(self, call, prefer=None):
            raise RuntimeError("simulated backend crash")

    monkeypatch.setattr("arcattn.hosts.common.get_router", lambda: Broken())
    q, k, v = (torch.randn(1, 10, 32, generator=rng) for _ in range(3))
    counter = forge.GenerationCounter()
    counter.start()
    out = U.attention_function(q, k, v, 2)
    assert torch.equal(out, original(q, k, v, 2))
    assert counter.counts() == {forge.HOST: 1} and counter.label() == forge.HOST


def test_wrapper_under_torch_compile(host, rng):
    """Forge Neo's compile extension compiles the UNet: dynamo then traces into arcattn's wrapper. The compiled
    layer gives the eager answer, and the accordion's toggle still holds per generation, not as it was when the
    layer was compiled. (One stand-in version only: dynamo's guards name modules by their import name, and the
    two versions are the same modules re-imported with other contents.)"""
    host(STANDINS)
    import backend.nn.unet as U
    forge.install()
    attn = _randomize(U.CrossAttention(query_dim=48, heads=3, dim_head=16), rng).eval()
    x = torch.randn(2, 21, 48, generator=rng)
    with torch.no_grad():
        eager = attn(x)
    torch._dynamo.reset()
    compiled = torch.compile(attn, backend="eager")
    try:
        for enabled in (True, False, True):
            forge.set_generation(enabled)
            before = sum(_served().values())
            with torch.no_grad():
                out = compiled(x)
            assert rel_error(out, eager) < 1e-5
            assert sum(_served().values()) - before == int(enabled)
    finally:
        torch._dynamo.reset()


# -- the older ldm_patched layout (reForge, Forge classic) --------------------------------------------------
def test_3d_mask_follows_forge_sdpa_broadcast(host, rng):
    """Forge's attention_pytorch hands a 3-D mask to SDPA as it is, so its first dim runs over heads
    ((H or 1, Sq, Sk) against (B, H, Sq, Sk)); arcattn must read it the same way, and a mask SDPA cannot
    broadcast must end where the host's own call ends (an error), never in a plausible answer."""
    host(STANDINS)
    import backend.attention as BA
    host_fn = BA.attention_function
    forge.install()
    B, H, Sq, Sk, D = 2, 2, 11, 9, 16
    q4, k4, v4 = (torch.randn(B, H, S, D, generator=rng) for S in (Sq, Sk, Sk))
    q, k, v = (t.transpose(1, 2).flatten(2) for t in (q4, k4, v4))
    for mask in (torch.randn(H, Sq, Sk, generator=rng), torch.rand(1, Sq, Sk, generator=rng) > 0.3):
        if mask.dtype == torch.bool:
            mask[..., 0] = True
        before = sum(_served().values())
        out = BA.attention_function(q, k, v, H, mask=mask)
        assert sum(_served().values()) == before + 1  # arcattn served it, not the host's fallback
        ref4, _ = attention_reference(q4.double(), k4.double(), v4.double(), mask=mask[None])
        assert rel_error(out, ref4.transpose(1, 2).flatten(2)) < 1e-5
        assert rel_error(out, host_fn(q, k, v, H, mask=mask)) < 1e-5
    with pytest.raises(RuntimeError):
        BA.attention_function(q[:, :, :16], k[:, :, :16], v[:, :, :16], 1, mask=torch.randn(B, Sq, Sk))


@pytest.mark.parametrize("forge_version", ["neo"])
def test_forge_neo_output_layout_follows_skip_output_reshape(host, rng):
    """Neo's functions take skip_output_reshape (Forge's do not): (B, H, N, D) out where it is set."""
    host(STANDINS)
    import backend.attention as BA
    host_fn = BA.attention_function
    forge.install()
    q, k, v = (torch.randn(2, 3, n, 16, generator=rng) for n in (13, 7, 7))
    for out_heads_first in (True, False):
        before = sum(_served().values())
        out = BA.attention_function(q, k, v, 3, skip_reshape=True, skip_output_reshape=out_heads_first)
        want = host_fn(q, k, v, 3, skip_reshape=True, skip_output_reshape=out_heads_first)
        assert out.shape == want.shape == ((2, 3, 13, 16) if out_heads_first else (2, 13, 48))
        assert rel_error(out, want) < 1e-5 and sum(_served().values()) == before + 1


@pytest.mark.parametrize("forge_version,impl", [("forge", "sub_quad"), ("forge", "basic"), ("neo", "pytorch"),
                                                ("neo", "basic")])
def test_3d_mask_follows_forge_sliced_functions_batch_first(host, monkeypatch, rng, impl):
    """Forge's sliced functions (attention_sub_quad, its CPU default, and split and basic) read a 3-D mask as
    (B, Sq, Sk), unlike its attention_pytorch, and so do all of Forge Neo's (ComfyUI's), its attention_pytorch
    included: arcattn must follow the function it wraps. B == H makes both readings valid shapes with different
    answers; a head-first mask is then an error, as in the host."""
    monkeypatch.setenv("ARCATTN_STANDIN_FORGE_ATTENTION", impl)
    host(STANDINS)
    import backend.attention as BA
    host_fn = BA.attention_function
    assert host_fn.__name__ == f"attention_{impl}"
    forge.install()
    assert BA.attention_function.mask3d == "batch"
    B = H = 2
    Sq, Sk, D = 11, 9, 16
    q4, k4, v4 = (torch.randn(B, H, S, D, generator=rng) for S in (Sq, Sk, Sk))
    q, k, v = (t.transpose(1, 2).flatten(2) for t in (q4, k4, v4))
    mask = torch.randn(B, Sq, Sk, generator=rng)
    before = sum(_served().values())
    out = BA.attention_function(q, k, v, H, mask=mask)
    assert sum(_served().values()) == before + 1
    ref4, _ = attention_reference(q4.double(), k4.double(), v4.double(), mask=mask[:, None].double())
    assert rel_error(out, ref4.transpose(1, 2).flatten(2)) < 1e-5
    assert rel_error(out, host_fn(q, k, v, H, mask=mask)) < 1e-5
    q3, k3, v3 = (torch.randn(1, S, 3 * D, generator=rng) for S in (Sq, Sk, Sk))
    with pytest.raises(RuntimeError):  # (3, Sq, Sk) against batch 1: the host cannot read it either
        host_fn(q3, k3, v3, 3, mask=torch.randn(3, Sq, Sk))
    with pytest.raises(RuntimeError):
        BA.attention_function(q3, k3, v3, 3, mask=torch.randn(3, Sq, Sk))


def test_3d_mask_with_an_unknown_reading_goes_to_the_host(host, monkeypatch, rng, caplog):
    """Forge classic's older ldm_patched functions (no skip_reshape) read a 3-D mask's first dim differently
    from one another (heads in attention_pytorch, B * H in the sliced ones), and another extension's
    replacement in Forge may read it any way: such a mask (first dim not 1) goes to the host's own function,
    with one log line; other calls, and 3-D masks of first dim 1, stay with arcattn."""
    from arcattn.hosts import common
    monkeypatch.setattr(common, "_warned", set())
    host(REFORGE)
    import ldm_patched.ldm.modules.attention as LA
    B = H = 2
    Sq, Sk, D = 7, 5, 8

    def classic_pytorch(q, k, v, heads, mask=None):  # Forge classic's signature and reading
        qh, kh, vh = (t.view(B, -1, heads, D).transpose(1, 2) for t in (q, k, v))
        return torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask).transpose(1, 2).flatten(2)

    monkeypatch.setattr(LA, "optimized_attention", classic_pytorch)
    monkeypatch.setattr(LA, "optimized_attention_masked", classic_pytorch)
    forge.install()
    w = LA.optimized_attention
    assert isinstance(w, forge.ForgeAttention) and w.mask3d is None
    q, k, v = (torch.randn(B, S, H * D, generator=rng) for S in (Sq, Sk, Sk))
    mask = torch.randn(H, Sq, Sk, generator=rng)
    with caplog.at_level(logging.WARNING, logger="arcattn"):
        for _ in range(3):
            before = sum(_served().values())
            out = w(q, k, v, H, mask)
            assert sum(_served().values()) == before  # the host served it
            assert torch.equal(out, classic_pytorch(q, k, v, H, mask))
    assert sum("3-D mask" in r.getMessage() for r in caplog.records) == 1
    before = sum(_served().values())
    one = mask[:1]
    assert rel_error(w(q, k, v, H, one), classic_pytorch(q, k, v, H, one).double()) < 1e-5
    assert sum(_served().values()) == before + 1


def test_ldm_patched_layout(host, rng):
    host(REFORGE)
    import ldm_patched.ldm.dit as DIT
    import ldm_patched.ldm.modules.attention as LA
    original = LA.optimized_attention
    assert LA.optimized_attention_masked is original and DIT.optimized_attention is original
    sites = forge.install()
    assert forge.layouts() == ["ldm_patched"]
    w = LA.optimized_attention
    assert isinstance(w, forge.ForgeAttention) and LA.optimized_attention_masked is w and DIT.optimized_attention is w
    assert w.mask3d == "batch"  # reForge's functions (ComfyUI's newer ones, with skip_reshape) read (B, Sq, Sk)
    assert "ldm_patched.ldm.dit.optimized_attention" in sites

    attn = _randomize(LA.CrossAttention(query_dim=32, context_dim=24, heads=2, dim_head=16), rng).eval()
    x = torch.randn(2, 19, 32, generator=rng)
    ctx = torch.randn(2, 7, 24, generator=rng)
    mask = torch.rand(2, 19, 7, generator=rng) > 0.3
    mask[..., 0] = True  # every query row attends somewhere
    before = _served()
    with torch.no_grad():
        out = attn(x, context=ctx)
        out_masked = attn(x, context=ctx, mask=mask)
        ref = _cross_attention_ref(attn, x.double(), ctx.double(), 2)
        ref_masked = _cross_attention_ref(attn, x.double(), ctx.double(), 2, mask=mask[:, None])
    assert rel_error(out, ref) < 1e-5 and rel_error(out_masked, ref_masked) < 1e-5
    q, k, v = (torch.randn(1, 2, 13, 16, generator=rng) for _ in range(3))
    out4 = DIT.attention(q, k, v)
    ref4, _ = attention_reference(q, k, v)
    assert rel_error(out4, ref4.transpose(1, 2).reshape(1, 13, 32)) < 1e-5
    assert sum(_served().values()) - sum(before.values()) == 3

    forge.uninstall()
    assert LA.optimized_attention is original and LA.optimized_attention_masked is original
    assert DIT.optimized_attention is original


# -- the extension script -----------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _arcattn_logger_restored():
    """Loading the script may give arcattn's logger a console handler (where the root has none): undone after
    each test, so no test's lines leak into another's output."""
    import logging
    lg = logging.getLogger("arcattn")
    saved = (list(lg.handlers), lg.level)
    yield
    lg.handlers[:] = saved[0]
    lg.setLevel(saved[1])


@pytest.fixture
def arcattn_logger(monkeypatch):
    """arcattn's logger with only its NullHandler, and both its level and the root logger's put back afterwards
    through setLevel (which also clears the loggers' cached isEnabledFor answers)."""
    lg = logging.getLogger("arcattn")
    levels = lg.level, logging.root.level
    monkeypatch.setattr(lg, "handlers", [h for h in lg.handlers if isinstance(h, logging.NullHandler)])
    monkeypatch.setattr(logging.root, "handlers", list(logging.root.handlers))
    lg.setLevel(logging.NOTSET)
    yield lg
    lg.setLevel(levels[0])
    logging.root.setLevel(levels[1])


def _load_script():
    """As Forge's script_loading.load_module does: by path, module named after the file, not in sys.modules."""
    spec = importlib.util.spec_from_file_location(os.path.basename(SCRIPT), SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _script_classes(mod):
    from modules import scripts
    return [c for c in vars(mod).values() if isinstance(c, type) and issubclass(c, scripts.Script)
            and c is not scripts.Script]


def test_script_ui_settings_and_infotext(host, rng):
    host(STANDINS)
    from modules import script_callbacks, scripts, shared
    script_callbacks.clear_callbacks()
    import backend.attention as A
    import backend.nn.unet as U
    original = A.attention_function
    mod = _load_script()
    (cls,) = _script_classes(mod)
    assert isinstance(A.attention_function, forge.ForgeAttention)  # installed once, at load

    # settings page
    script_callbacks.ui_settings_callback()
    opt_on, opt_backend = shared.opts.data_labels["arcattn_enabled"], shared.opts.data_labels["arcattn_backend"]
    assert opt_on.section == opt_backend.section == ("arcattn", "Arc Attention")
    assert opt_on.default is True and opt_backend.default == "auto"
    assert opt_backend.component_args["choices"] == ["auto", *NAMES]

    s = cls()
    assert s.title() == "Arc Attention" and s.show(False) is scripts.AlwaysVisible
    enabled, backend = s.ui(False)
    assert enabled.value is True and enabled.accordion.kwargs["label"] == "Arc Attention"
    assert backend.value == "auto" and backend.kwargs["choices"] == ["auto", *NAMES]
    assert any("sdpa: available" in (c.value or "") for c in enabled.accordion.children)
    # the host's ui-config.json must not pin them: the settings page's defaults apply at every UI build
    assert enabled.do_not_save_to_config is True and backend.do_not_save_to_config is True
    assert enabled.accordion.do_not_save_to_config is True

    attn = _randomize(U.CrossAttention(query_dim=32, heads=2, dim_head=16), rng).eval()
    x = torch.randn(1, 20, 32, generator=rng)

    # one generation with the toggle on
    p = types.SimpleNamespace(extra_generation_params={})
    s.process(p, True, "auto")
    s.process_before_every_sampling(p, True, "auto", x=None, noise=None, c=None, uc=None)
    before = _served()
    with torch.no_grad():
        attn(x)
        attn(x)
    s.postprocess_batch(p, True, "auto", images=None, batch_number=0)
    served = {n: c - before[n] for n, c in _served().items() if c > before[n]}
    assert p.extra_generation_params["Arc Attention"] == max(served, key=served.get)
    s.postprocess(p, None, True, "auto")

    # and one with it off: the host's function, recorded as "off"
    p = types.SimpleNamespace(extra_generation_params={})
    s.process(p, False, "auto")
    s.process_before_every_sampling(p, False, "auto")
    before = _served()
    q, k, v = (torch.randn(1, 8, 32, generator=rng) for _ in range(3))
    assert torch.equal(U.attention_function(q, k, v, 2), original(q, k, v, 2))
    s.postprocess_batch(p, False, "auto", images=None, batch_number=0)
    assert _served() == before
    assert p.extra_generation_params["Arc Attention"] == "off"
    s.postprocess(p, None, False, "auto")
    assert forge.generation_settings() == (True, None)  # back to the settings' defaults after the generation

    # API call without this script's args: the settings' defaults
    shared.opts.set("arcattn_backend", "sdpa")
    assert forge.generation_settings() == (True, "sdpa")  # onchange applies at once
    p = types.SimpleNamespace(extra_generation_params={})
    s.process_before_every_sampling(p)
    assert forge.generation_settings() == (True, "sdpa")
    shared.opts.set("arcattn_enabled", False)
    assert s.ui(True)[0].value is False

    # a UI reload unloads (restores) and loads again (installs again)
    script_callbacks.script_unloaded_callback()
    assert A.attention_function is original and U.attention_function is original


def test_script_never_raises_at_import(host, monkeypatch, caplog):
    host(STANDINS)
    from modules import script_callbacks
    script_callbacks.clear_callbacks()
    import backend.attention as A
    original = A.attention_function
    monkeypatch.setitem(sys.modules, "arcattn.hosts.forge", None)  # importing it now raises ImportError
    monkeypatch.delattr(arcattn.hosts, "forge")
    with caplog.at_level(logging.ERROR, logger="arcattn"):
        mod = _load_script()
    assert not _script_classes(mod)
    assert A.attention_function is original
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "Forge extension not loaded" in errors[0].getMessage()


def test_script_outside_forge_logs_one_error(host, caplog):
    # no webui modules on the path at all (e.g. the file imported by another host)
    with caplog.at_level(logging.ERROR, logger="arcattn"):
        mod = _load_script()
    assert not mod._loaded
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1


def test_script_switched_off_by_environment(host, monkeypatch):
    host(STANDINS)
    monkeypatch.setenv("ARCATTN_FORGE", "0")
    import backend.attention as A
    original = A.attention_function
    mod = _load_script()
    assert not mod._loaded and not _script_classes(mod) and A.attention_function is original


def test_script_gives_arcattn_a_console_only_where_forge_configured_no_logging(host, monkeypatch, arcattn_logger):
    """Forge sets up no logging handler by default and arcattn's logger ends in a NullHandler: the script adds one
    console handler then (once), none where logging is configured, and its handler steps aside once the root logger
    gets a handler later (no line printed twice)."""
    import io
    mod = _load_script()
    lg = arcattn_logger
    lg.handlers[:] = [h for h in lg.handlers if isinstance(h, logging.NullHandler)]  # none the import added
    lg.setLevel(logging.NOTSET)
    root_out = io.StringIO()
    logging.root.handlers[:] = [logging.StreamHandler(root_out)]
    mod._console_logging()
    assert all(isinstance(h, logging.NullHandler) for h in lg.handlers)  # configured: nothing added
    lg.setLevel(logging.NOTSET)
    logging.root.handlers[:] = []
    mod._console_logging()
    mod._console_logging()
    added = [h for h in lg.handlers if not isinstance(h, logging.NullHandler)]
    assert len(added) == 1
    ours = io.StringIO()
    (getattr(added[0], "fallback_handler", None) or added[0]).setStream(ours)
    lg.warning("one fact")
    assert ours.getvalue() == "[arcattn] WARNING one fact\n"
    assert lg.getEffectiveLevel() <= logging.INFO
    # another extension configures logging after the script loaded: the line goes through the root only
    logging.root.handlers[:] = [logging.StreamHandler(root_out)]
    lg.warning("another fact")
    assert ours.getvalue() == "[arcattn] WARNING one fact\n" and root_out.getvalue() == "another fact\n"


@pytest.mark.parametrize("chosen", [None, "env", "argv"])
def test_script_logs_at_info_where_forge_neo_configured_logging_at_error(host, monkeypatch, arcattn_logger, chosen):
    """Forge Neo configures the root logger at every start, at ERROR unless SD_WEBUI_LOG_LEVEL or --loglevel says
    otherwise (its own messages and extensions' print() go through loggers of their own at INFO). arcattn's lines
    then reach Neo's console at INFO through that handler, with no handler of arcattn's; a level the user picked
    is left as it is."""
    import io
    mod = _load_script()
    lg = arcattn_logger
    lg.handlers[:] = [h for h in lg.handlers if isinstance(h, logging.NullHandler)]
    lg.setLevel(logging.NOTSET)
    monkeypatch.delenv("SD_WEBUI_LOG_LEVEL", raising=False)
    monkeypatch.setattr(sys, "argv", ["launch.py", "--always-cpu"])
    if chosen == "env":
        monkeypatch.setenv("SD_WEBUI_LOG_LEVEL", "ERROR")
    elif chosen == "argv":
        monkeypatch.setattr(sys, "argv", ["launch.py", "--loglevel", "ERROR"])
    neo_out = io.StringIO()
    logging.root.handlers[:] = [logging.StreamHandler(neo_out)]
    logging.root.setLevel(logging.ERROR)
    mod._console_logging()
    assert all(isinstance(h, logging.NullHandler) for h in lg.handlers)
    lg.info("arcattn: one fact")
    assert neo_out.getvalue() == ("" if chosen else "arcattn: one fact\n")
