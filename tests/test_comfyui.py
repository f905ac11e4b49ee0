"""ComfyUI adapter against a stand-in of comfy.ldm.modules.attention with the host's signatures and hooks."""
import importlib
import logging
import math
import os
import queue
import sys
import threading
import types

import pytest
import torch

import arcattn
from arcattn.backends.base import Backend
from arcattn.backends.sdpa import SDPABackend
from arcattn.dispatch import Router
from arcattn.reference import attention_reference, rel_error
from served_calls import served_total

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANDINS = os.path.join(ROOT, "tests", "standins")


# ComfyUI 0.3.64's conventions, and later ComfyUI's (q, k and v in single-use containers, `preferred_attention`,
# `scale=` honoured): every test of the adapter runs against both
@pytest.fixture(params=["0.3.64", "later"])
def comfy(request, monkeypatch):
    """Fresh stand-in host modules for each test; the real ComfyUI test runs in its own process."""
    for name in [n for n in sys.modules if n == "comfy" or n.startswith("comfy.")]:
        del sys.modules[name]
    monkeypatch.setenv("ARCATTN_STANDIN_COMFYUI", request.param)
    sys.path.insert(0, STANDINS)
    try:
        attention = importlib.import_module("comfy.ldm.modules.attention")
        patcher = importlib.import_module("comfy.model_patcher")
        attention.CALLS.clear()
        yield attention, patcher
    finally:
        from arcattn.hosts import comfyui
        comfyui.unpatch()
        comfyui.unregister(attention)
        sys.path.remove(STANDINS)
        for name in [n for n in sys.modules if n == "comfy" or n.startswith("comfy.")]:
            del sys.modules[name]


class Recorder(Backend):
    """A fast-path stand-in that serves via SDPA and records what it saw."""
    name = "rec"
    supports_mask = False

    def __init__(self):
        self.seen = []

    def run(self, call):
        self.seen.append((call.layout, call.out_layout, call.mask is not None))
        return SDPABackend().run(call)


@pytest.fixture
def rec():
    r = Recorder()
    arcattn.set_router(Router([r, SDPABackend()], disabled=(), prefer=""))
    return r


def inputs(gen, B=2, H=4, Sq=24, Sk=77, D=40):
    return [torch.randn(B, S, H * D, generator=gen) for S in (Sq, Sk, Sk)]


def test_patch_rebinds_registers_and_undoes(comfy, rec):
    attention, _ = comfy
    from arcattn.hosts import comfyui
    orig, orig_masked = attention.optimized_attention, attention.optimized_attention_masked
    # a model module imported before the patch holds its own copies, which the patch must reach too
    early = types.ModuleType("comfy.ldm.early_model")
    early.optimized_attention, early.optimized_attention_masked = orig, orig_masked
    sys.modules[early.__name__] = early
    assert comfyui.load(attention)
    assert attention.optimized_attention is not orig
    assert early.optimized_attention is attention.optimized_attention
    assert early.optimized_attention_masked is attention.optimized_attention_masked
    assert attention.optimized_attention.__wrapped__.original is orig  # host's wrap_attn kept around ours
    assert "arcattn" in attention.REGISTERED_ATTENTION_FUNCTIONS
    # a model module imported after the patch (as ComfyUI does on a workflow's first use) copies our function
    late = types.ModuleType("comfy.ldm.late_model")
    late.optimized_attention = attention.optimized_attention
    late.optimized_attention_masked = attention.optimized_attention_masked
    sys.modules[late.__name__] = late
    comfyui.unpatch()
    comfyui.unregister(attention)
    assert attention.optimized_attention is orig and attention.optimized_attention_masked is orig_masked
    assert late.optimized_attention is orig and late.optimized_attention_masked is orig_masked
    assert early.optimized_attention is orig and early.optimized_attention_masked is orig_masked
    assert "arcattn" not in attention.REGISTERED_ATTENTION_FUNCTIONS


def test_unpatch_leaves_a_binding_another_plugin_made_since(comfy, rec):
    """A plugin that installs its own attention function after arcattn's patch (a SageAttention patch node, say)
    keeps it when arcattn unpatches; the bindings still ours go back to ComfyUI's."""
    attention, _ = comfy
    from arcattn.hosts import comfyui
    orig, orig_masked = attention.optimized_attention, attention.optimized_attention_masked
    comfyui.patch(attention)

    def other_plugins_attention(q, k, v, heads, mask=None, **kwargs):
        raise AssertionError("not called")
    attention.optimized_attention = other_plugins_attention
    comfyui.unpatch()
    assert attention.optimized_attention is other_plugins_attention
    assert attention.optimized_attention_masked is orig_masked
    attention.optimized_attention = orig


def test_patch_reaches_custom_nodes_loaded_before_it(comfy, rec, rng):
    """A custom node that ComfyUI loaded first (IP-Adapter nodes call their own copy of optimized_attention in
    their attn2 replacement) is routed too, and given its original back; a lazy module's __getattr__ is not run."""
    attention, _ = comfy
    from arcattn.hosts import comfyui
    orig = attention.optimized_attention
    node = types.ModuleType("ComfyUI_IPAdapter_like.CrossAttentionPatch")
    node.optimized_attention = orig
    lazy_hits = []

    class Lazy(types.ModuleType):
        def __getattr__(self, name):
            lazy_hits.append(name)
            raise AttributeError(name)

    lazy = Lazy("some_lazy_package")
    sys.modules[node.__name__], sys.modules[lazy.__name__] = node, lazy
    try:
        assert comfyui.load(attention)
        assert node.optimized_attention is attention.optimized_attention is not orig
        assert not lazy_hits
        q, k, v = inputs(rng)
        out = node.optimized_attention(q, k, v, 4)
        assert rec.seen, "the custom node's copy did not reach arcattn"
        ref, _ = attention_reference(*(t.double().view(2, -1, 4, 40).transpose(1, 2) for t in (q, k, v)))
        assert rel_error(out.view(2, -1, 4, 40).transpose(1, 2), ref) < 1e-5
        comfyui.unpatch()
        assert node.optimized_attention is orig
    finally:
        del sys.modules[node.__name__], sys.modules[lazy.__name__]


def test_patch_does_not_load_lazy_modules_and_survives_one_that_cannot(comfy, rec, tmp_path, monkeypatch):
    """Finding the copies reads no module attribute: a module loaded lazily (importlib.util.LazyLoader, as
    lazy_loader and networkx make them) stays unloaded, even one whose import would fail."""
    import importlib.util
    attention, _ = comfy
    from arcattn.hosts import comfyui
    (tmp_path / "lazy_ok_mod.py").write_text("RAN = True\n")
    (tmp_path / "lazy_broken_mod.py").write_text("import no_such_module_anywhere\n")
    lazies = {}
    for name in ("lazy_ok_mod", "lazy_broken_mod"):
        spec = importlib.util.spec_from_file_location(name, tmp_path / f"{name}.py")
        spec.loader = importlib.util.LazyLoader(spec.loader)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        lazies[name] = module

    class LazyProxy:  # not a module: a lazy stand-in some packages put in sys.modules
        def __getattribute__(self, name):
            raise ImportError(f"deferred import failed ({name})")
    monkeypatch.setitem(sys.modules, "lazy_proxy_mod", LazyProxy())
    orig = attention.optimized_attention
    assert comfyui.load(attention) and attention.optimized_attention is not orig
    comfyui.unpatch()
    assert attention.optimized_attention is orig
    assert all(type(m).__name__ == "_LazyModule" for m in lazies.values())  # neither was loaded
    assert lazies["lazy_ok_mod"].RAN  # and a lazy module still loads when it is used


def test_checkpoint_recomputation_passes_through(rng):
    """Non-reentrant checkpointing stops its recomputation with an exception raised inside the op that saves the
    last tensor it needs; the wrapper must let it through rather than serve the call again with the host's
    function. Gradients as the host's own function gives them."""
    import torch.utils.checkpoint as checkpoint
    from arcattn.hosts.common import HostAttention

    def host(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False, **kw):
        b, _, hd = q.shape
        q, k, v = (t.reshape(b, -1, heads, hd // heads).transpose(1, 2) for t in (q, k, v))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).reshape(b, -1, hd)

    proj = torch.nn.Linear(32, 96).double()
    x = torch.randn(2, 40, 32, generator=rng, dtype=torch.float64)
    grads = []
    for fn in (host, HostAttention(host, "test")):
        def block(t):
            q, k, v = proj(t).chunk(3, dim=-1)
            return fn(q, k, v, 4)  # the last op in the block that saves tensors for backward
        xi = x.clone().requires_grad_(True)
        proj.zero_grad()
        checkpoint.checkpoint(block, xi, use_reentrant=False).pow(2).sum().backward()
        grads.append((xi.grad.clone(), proj.weight.grad.clone()))
    assert fn.fallbacks == {}, fn.fallbacks
    for ours, ref in zip(grads[1], grads[0]):
        assert rel_error(ours, ref) < 1e-10


def test_env_switch_skips_patch(comfy, rec, monkeypatch):
    attention, _ = comfy
    from arcattn.hosts import comfyui
    monkeypatch.setenv("ARCATTN_COMFYUI_PATCH", "0")
    orig = attention.optimized_attention
    assert comfyui.load(attention)
    assert attention.optimized_attention is orig
    assert "arcattn" in attention.REGISTERED_ATTENTION_FUNCTIONS  # still selectable by name


@pytest.mark.parametrize("skip_reshape,skip_output_reshape", [(False, False), (True, False), (True, True), (False, True)])
def test_patched_function_honours_host_signature(comfy, rec, rng, skip_reshape, skip_output_reshape):
    attention, _ = comfy
    from arcattn.hosts import comfyui
    comfyui.patch(attention)
    H, D = 4, 40
    q, k, v = inputs(rng, H=H, D=D)
    q4, k4, v4 = (t.unflatten(-1, (H, D)).transpose(1, 2) for t in (q, k, v))
    args = (q4, k4, v4) if skip_reshape else (q, k, v)
    out = attention.optimized_attention(*args, H, skip_reshape=skip_reshape, skip_output_reshape=skip_output_reshape,
                                        transformer_options={}, unknown_future_kwarg=1, scale=None)
    expected = attention.attention_pytorch(*args, H, skip_reshape=skip_reshape, skip_output_reshape=skip_output_reshape)
    assert out.shape == expected.shape
    assert rel_error(out, expected) < 1e-5
    assert rec.seen == [("bhsd" if skip_reshape else "bsd", "bhsd" if skip_output_reshape else "bsd", False)]
    ref, _ = attention_reference(q4, k4, v4)
    ref = ref if skip_output_reshape else ref.transpose(1, 2).flatten(2)
    assert rel_error(out, ref) < 1e-5


def test_keys_are_read_by_the_querys_batch_as_the_host_reads_them(comfy, rec, rng, caplog):
    """ComfyUI's HyperTile hands q in tiles, (B * tiles, S / tiles, C), beside k and v of (B, S, C); the host's
    functions read every tensor by q's batch. arcattn serves such a call, with the host's answer."""
    attention, _ = comfy
    from arcattn.hosts import comfyui
    comfyui.patch(attention)
    H, D, B, S, tiles = 4, 40, 2, 64, 4
    q = torch.randn(B * tiles, S // tiles, H * D, generator=rng)
    k, v = (torch.randn(B, S, H * D, generator=rng) for _ in range(2))
    with caplog.at_level(logging.WARNING, logger="arcattn"):
        out = attention.optimized_attention(q, k, v, H)
    assert rec.seen == [("bsd", "bsd", False)] and not caplog.records  # served, not handed back
    assert rel_error(out, attention.attention_pytorch(q, k, v, H)) < 1e-5
    q4, k4, v4 = (t.reshape(B * tiles, -1, H, D).transpose(1, 2) for t in (q, k, v))
    ref, _ = attention_reference(q4, k4, v4)
    assert k4.shape[2] == S // tiles and rel_error(out, ref.transpose(1, 2).flatten(2)) < 1e-5
    # where the keys do not split by q's batch, the host's reading fails, and so does the call
    with pytest.raises(RuntimeError):
        attention.attention_pytorch(q[:3], k, v, H)  # 2 * 64 keys do not split into 3
    with pytest.raises(RuntimeError):
        attention.optimized_attention(q[:3], k, v, H)


def test_scale_keyword_is_treated_as_the_host_function_treats_it(rec, rng):
    """`scale=` hidden in **kwargs: ComfyUI 0.3.64 and Forge ignore it, later ComfyUI honours it. arcattn serves
    the default scale, which both readings share, and hands any other back, so the host's own reading answers.
    A function that names `scale` gets it honoured."""
    from arcattn.hosts.common import HostAttention
    q, k, v = inputs(rng)
    H, D = 4, q.shape[-1] // 4
    q4, k4, v4 = (t.unflatten(-1, (H, -1)).transpose(1, 2) for t in (q, k, v))
    host_calls = []

    def ignores(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, **kwargs):
        host_calls.append("ignores")
        return attention_reference(q4, k4, v4)[0].transpose(1, 2).flatten(2).to(q.dtype)

    def honours_in_kwargs(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, **kwargs):
        host_calls.append("honours_in_kwargs")
        s = kwargs.get("scale", D ** -0.5)
        return attention_reference(q4, k4, v4, scale=s)[0].transpose(1, 2).flatten(2).to(q.dtype)

    def names_it(q, k, v, heads, mask=None, scale=None, **kwargs):
        raise AssertionError("not reached")

    for fn in (ignores, honours_in_kwargs):
        wrapped = HostAttention(fn, "comfyui")
        for scale in (0.3, None, D ** -0.5, 1 / math.sqrt(D)):
            host_calls.clear()
            seen = len(rec.seen)
            out = wrapped(q, k, v, H, scale=scale)
            expected = fn(q, k, v, H, **({} if scale is None else {"scale": scale}))
            assert rel_error(out, expected) < 1e-5, (fn.__name__, scale)
            served = len(rec.seen) > seen
            assert served == (scale != 0.3) and (host_calls == [fn.__name__] * 2) == (not served), (fn, scale)
    ref, _ = attention_reference(q4, k4, v4, scale=0.3)
    out = HostAttention(names_it, "comfyui")(q, k, v, H, scale=0.3)
    assert rel_error(out, ref.transpose(1, 2).flatten(2)) < 1e-5
    assert rel_error(ref, attention_reference(q4, k4, v4)[0]) > 1e-2  # the scales tell apart


def test_grouped_query_call_goes_to_the_host(rec, rng, caplog):
    """Later ComfyUI passes `enable_gqa=True` with k and v of fewer heads than q: the host's function serves it."""
    from arcattn.hosts.common import HostAttention
    q = torch.randn(2, 4, 16, 8, generator=rng)
    k, v = (torch.randn(2, 2, 16, 8, generator=rng) for _ in range(2))

    def host(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
             **kwargs):
        assert kwargs.get("enable_gqa") and skip_reshape and skip_output_reshape
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    with caplog.at_level(logging.WARNING, logger="arcattn"):
        out = HostAttention(host, "comfyui")(q, k, v, 4, skip_reshape=True, skip_output_reshape=True,
                                             enable_gqa=True)
    assert not rec.seen and "enable_gqa" in caplog.text
    ref, _ = attention_reference(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1))
    assert rel_error(out, ref) < 1e-5


def test_masked_call_goes_to_a_backend_that_takes_masks(comfy, rec, rng):
    attention, _ = comfy
    from arcattn.hosts import comfyui
    comfyui.patch(attention)
    q, k, v = inputs(rng, B=1, Sq=8, Sk=8)
    mask = torch.randn(8, 8, generator=rng)
    out = attention.optimized_attention_masked(q, k, v, 4, mask)
    assert rec.seen == []  # the recorder declines masks; sdpa served
    assert rel_error(out, attention.attention_pytorch(q, k, v, 4, mask)) < 1e-5
    t = arcattn.telemetry()
    assert t["rec"]["declined"] == {"attention mask not supported": 1} and t["sdpa"]["served"] == 1


def test_low_precision_false_means_plain_sdpa(comfy, rec, rng):
    attention, _ = comfy
    from arcattn.hosts import comfyui
    comfyui.patch(attention)
    attention.optimized_attention(*inputs(rng), 4, low_precision_attention=False)
    assert rec.seen == []
    attention.optimized_attention(*inputs(rng), 4, attn_precision=torch.float32)
    assert len(rec.seen) == 1


def test_cross_attention_forward_reaches_arcattn(comfy, rec, rng):
    attention, _ = comfy
    from arcattn.hosts import comfyui
    torch.manual_seed(0)
    layer = attention.CrossAttention(64, context_dim=32, heads=4, dim_head=16)
    x, ctx = torch.randn(2, 10, 64, generator=rng), torch.randn(2, 77, 32, generator=rng)
    with torch.no_grad():  # inference, as hosts sample (training goes to a backend with a backward)
        before = layer(x, ctx)
        comfyui.patch(attention)
        after = layer(x, ctx)
        assert rel_error(after, before) < 1e-5
        assert len(rec.seen) == 1
        comfyui.unpatch()
        layer(x, ctx)
    assert len(rec.seen) == 1


def test_any_failure_is_served_by_the_host_and_logged_once(comfy, rng, caplog):
    attention, _ = comfy
    from arcattn.hosts import comfyui
    comfyui.patch(attention)
    arcattn.set_router(None)

    def broken_router():
        raise RuntimeError("router exploded")

    import arcattn.hosts.common as common
    real = common.get_router
    common.get_router = broken_router
    try:
        with caplog.at_level(logging.WARNING, logger="arcattn"):
            for _ in range(3):
                q, k, v = inputs(rng)
                out = attention.optimized_attention(q, k, v, 4)
                assert rel_error(out, attention.attention_pytorch(q, k, v, 4)) < 1e-5
    finally:
        common.get_router = real
    assert attention.CALLS.count("attention_pytorch") >= 3
    assert len([r for r in caplog.records if "router exploded" in r.getMessage()]) == 1


def test_cross_attention_through_a_failing_arcattn_is_the_hosts(comfy, rng, monkeypatch):
    """The whole layer, arcattn failing on every call: the host's function serves, with the inputs it would have
    had (later ComfyUI hands them over in single-use containers, unpacked once before arcattn sees them)."""
    attention, _ = comfy
    from arcattn.hosts import comfyui
    import arcattn.hosts.common as common
    layer = attention.CrossAttention(64, context_dim=32, heads=4, dim_head=16).requires_grad_(False)
    x, ctx = torch.randn(2, 10, 64, generator=rng), torch.randn(2, 77, 32, generator=rng)
    before = layer(x, ctx)
    comfyui.patch(attention)

    def broken_router():
        raise RuntimeError("router exploded")
    monkeypatch.setattr(common, "get_router", broken_router)
    attention.CALLS.clear()
    assert rel_error(layer(x, ctx), before) < 1e-6 and attention.CALLS == ["attention_pytorch"]


def test_scale_given_to_the_patched_function_is_answered_as_the_host_answers(comfy, rec, rng):
    """0.3.64 ignores `scale=`, later ComfyUI honours it: through the patch the answer is the host's either way;
    the default scale, which both read alike, is served."""
    attention, _ = comfy
    from arcattn.hosts import comfyui
    q, k, v = inputs(rng)
    host, host_default = attention.attention_pytorch(q, k, v, 4, scale=0.3), attention.attention_pytorch(q, k, v, 4)
    comfyui.patch(attention)
    attention.CALLS.clear()
    assert rel_error(attention.optimized_attention(q, k, v, 4, scale=0.3), host) < 1e-6
    assert rec.seen == [] and attention.CALLS == ["attention_pytorch"]
    out = attention.optimized_attention(q, k, v, 4, scale=(q.shape[-1] // 4) ** -0.5)
    assert len(rec.seen) == 1 and rel_error(out, host_default) < 1e-5
    honours = rel_error(host, host_default) > 1e-2
    assert honours == attention.LATER  # the two versions differ where they should


def test_fallback_calls_a_minimal_replacement_and_logs_once_per_process(rng, caplog, monkeypatch):
    """A replacement another extension installed may take only (q, k, v, heads, mask): the fallback passes no
    keyword the caller did not set. Wrappers built anew per node run still log a reason once."""
    import arcattn.hosts.common as common
    seen = []

    def minimal(q, k, v, heads, mask=None):
        seen.append(mask)
        q4, k4, v4 = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
        return torch.nn.functional.scaled_dot_product_attention(q4, k4, v4).transpose(1, 2).flatten(2)

    def broken_router():
        raise RuntimeError("router exploded")
    q, k, v = inputs(rng)
    want = minimal(q, k, v, 4)
    monkeypatch.setattr(common, "get_router", broken_router)
    with caplog.at_level(logging.WARNING, logger="arcattn"):
        for _ in range(3):
            out = common.HostAttention(minimal, "comfyui")(q, k, v, 4)
            assert torch.equal(out, want)
    assert len(seen) == 4
    assert len([r for r in caplog.records if "router exploded" in r.getMessage()]) == 1


def test_load_never_raises(comfy, caplog):
    from arcattn.hosts import comfyui

    class Broken:
        @property
        def optimized_attention(self):
            raise AttributeError("host moved things around")

    with caplog.at_level(logging.ERROR, logger="arcattn"):
        assert comfyui.load(Broken()) is False
    assert not comfyui.is_patched()
    assert any("ComfyUI runs unchanged" in r.getMessage() for r in caplog.records)


def test_node_off_reaches_the_host_through_another_plugins_wrapper(comfy, rec, rng):
    """Off means the host's own function even when another plugin wrapped ours (functools.wraps style)."""
    import functools
    attention, _ = comfy
    from arcattn.hosts import comfyui
    from arcattn.hosts.common import HostAttention
    ours = HostAttention(attention.attention_pytorch, "comfyui")

    @functools.wraps(ours)
    def other_plugin(*args, **kwargs):
        return ours(*args, **kwargs)
    q, k, v = (torch.randn(1, 12, 64, generator=rng) for _ in range(3))
    rec.seen.clear()
    attention.CALLS.clear()
    out = comfyui.make_override(enabled=False)(other_plugin, q, k, v, 4)
    assert rec.seen == [] and attention.CALLS == ["attention_pytorch"]
    assert rel_error(out, attention.attention_pytorch(q, k, v, 4)) < 1e-6


@pytest.mark.parametrize("patched", [True, False])
def test_node_enables_and_disables_per_model(comfy, rec, rng, patched):
    attention, patcher = comfy
    from arcattn.hosts import comfyui
    import nodes as arc_nodes
    if patched:
        comfyui.patch(attention)
    layer = attention.CrossAttention(64, heads=4, dim_head=16).requires_grad_(False)
    model = patcher.ModelPatcher(layer)
    x = torch.randn(1, 12, 64, generator=rng)
    baseline = layer(x)
    rec.seen.clear()
    attention.CALLS.clear()

    (on,) = arc_nodes.ArcAttention().apply(model, enabled=True, backend="auto")
    assert "optimized_attention_override" not in model.model_options["transformer_options"]  # source untouched
    out = layer(x, transformer_options=on.model_options["transformer_options"])
    assert len(rec.seen) == 1 and attention.CALLS == [] and rel_error(out, baseline) < 1e-5

    (off,) = arc_nodes.ArcAttention().apply(model, enabled=False, backend="auto")
    out = layer(x, transformer_options=off.model_options["transformer_options"])
    assert len(rec.seen) == 1 and attention.CALLS == ["attention_pytorch"] and rel_error(out, baseline) < 1e-5

    (forced,) = arc_nodes.ArcAttention().apply(model, enabled=True, backend="sdpa")
    layer(x, transformer_options=forced.model_options["transformer_options"])
    assert len(rec.seen) == 1  # sdpa preferred over the recorder


def test_node_setting_holds_for_calls_without_transformer_options(comfy, rec, rng):
    """With the global patch on, a call made inside the node's model without its transformer_options (an IP-Adapter
    node calling its own copy of optimized_attention) follows the node: off is the host's function, a named
    backend is preferred; outside any such model the global patch serves it. A second node replaces the first's
    model wrapper."""
    attention, patcher = comfy
    from arcattn.hosts import comfyui
    import comfy.patcher_extension as ext
    import nodes as arc_nodes
    comfyui.patch(attention)
    copy = attention.optimized_attention  # what a custom node loaded after arcattn holds
    model = patcher.ModelPatcher(torch.nn.Identity())
    q, k, v = inputs(rng)
    host = attention.attention_pytorch(q, k, v, 4)

    def apply_model(m, grad=False):  # a sampling step as ComfyUI runs it: inference mode, the model's
        rec.seen.clear()             # CALC_COND_BATCH wrappers around the step
        attention.CALLS.clear()
        with torch.inference_mode(not grad), torch.set_grad_enabled(grad):
            return ext.run_with_wrappers(m.get_all_wrappers(ext.WrappersMP.CALC_COND_BATCH), copy, q, k, v, 4)

    (on,) = arc_nodes.ArcAttention().apply(model, enabled=True, backend="auto")
    assert not model.wrappers  # the source model is untouched
    out = apply_model(on)
    assert len(rec.seen) == 1 and attention.CALLS == [] and rel_error(out, host) < 1e-5

    (off,) = arc_nodes.ArcAttention().apply(on, enabled=False, backend="auto")
    assert len(off.get_all_wrappers(ext.WrappersMP.CALC_COND_BATCH)) == 1  # the later node's, not the first's
    out = apply_model(off)
    assert rec.seen == [] and attention.CALLS == ["attention_pytorch"] and rel_error(out, host) < 1e-6
    # with autograd on (training: a checkpointed block is recomputed after the wrapper returned) the wrapper
    # leaves the choice to the global patch, so forward and recomputation take the same path
    apply_model(off, grad=True)
    assert len(rec.seen) == 1 and attention.CALLS == []

    (forced,) = arc_nodes.ArcAttention().apply(model, enabled=True, backend="sdpa")
    out = apply_model(forced)
    assert rec.seen == [] and attention.CALLS == [] and rel_error(out, host) < 1e-5  # sdpa, not the recorder

    apply_model(model)  # no node: the global patch's choice
    assert len(rec.seen) == 1 and attention.CALLS == []
    assert comfyui._model_setting.get() is None  # nothing left set after the model returned


def test_node_replacing_another_nodes_override_says_so(comfy, caplog):
    """ComfyUI keeps one attention override per model: the node's replaces an earlier node's (one log line naming
    it), and a second Arc Attention node replaces the first's quietly."""
    _, patcher = comfy
    import nodes as arc_nodes

    def other_plugins_override(func, *args, **kwargs):
        return func(*args, **kwargs)

    model = patcher.ModelPatcher(torch.nn.Identity())
    model.model_options["transformer_options"]["optimized_attention_override"] = other_plugins_override
    with caplog.at_level(logging.INFO, logger="arcattn"):
        (on,) = arc_nodes.ArcAttention().apply(model, enabled=True, backend="auto")
        arc_nodes.ArcAttention().apply(on, enabled=False, backend="auto")
    said = [r.getMessage() for r in caplog.records if "replaces" in r.getMessage()]
    assert len(said) == 1 and "other_plugins_override" in said[0]
    assert model.model_options["transformer_options"]["optimized_attention_override"] is other_plugins_override


def test_node_setting_holds_on_multigpu_worker_threads(comfy, rec, rng):
    """Later ComfyUI's multi-GPU sampling runs a step's work on the persistent worker threads of
    model_options["multigpu_thread_pool"] (started before the step, so they never saw its ContextVar). A call there
    without transformer_options follows the node of the step running now; a thread that is not one of the step's
    workers keeps the global patch's choice, and so do the workers once the step is over."""
    attention, patcher = comfy
    from arcattn.hosts import comfyui
    import comfy.patcher_extension as ext
    import nodes as arc_nodes
    comfyui.patch(attention)
    copy = attention.optimized_attention
    q, k, v = inputs(rng)
    host = attention.attention_pytorch(q, k, v, 4)

    def worker_loop(work, results):  # as comfy.multigpu.MultiGPUThreadPool._worker_loop: one thread for the run
        with torch.inference_mode():
            for fn in iter(work.get, None):
                results.put(fn())

    def start_worker():
        work, results = queue.Queue(), queue.Queue()
        t = threading.Thread(target=worker_loop, args=(work, results), daemon=True)
        t.start()
        return t, work, results

    worker, work, results = start_worker()
    other, other_work, other_results = start_worker()  # a thread of something else running meanwhile

    def on(queues):
        queues[0].put(lambda: (copy(q, k, v, 4), len(rec.seen), list(attention.CALLS)))
        return queues[1].get(timeout=60)

    pool = types.SimpleNamespace(_workers=[worker])  # the part of MultiGPUThreadPool that arcattn reads
    try:
        model = patcher.ModelPatcher(torch.nn.Identity())
        (off,) = arc_nodes.ArcAttention().apply(model, enabled=False, backend="auto")

        def step(model, conds, x_in, timestep, model_options):  # _calc_cond_batch_outer's arguments
            rec.seen.clear()
            attention.CALLS.clear()
            return on((work, results)), on((other_work, other_results))

        with torch.inference_mode():
            (out, seen, calls), (_, other_seen, other_calls) = ext.run_with_wrappers(
                off.get_all_wrappers(ext.WrappersMP.CALC_COND_BATCH), step, off, [], q, 1.0,
                {"multigpu_thread_pool": pool})
        assert seen == 0 and calls == ["attention_pytorch"] and rel_error(out, host) < 1e-6  # the node: off
        assert other_seen == 1 and other_calls == calls  # the global patch: arcattn served it, not the host

        attention.CALLS.clear()
        _, seen, calls = on((work, results))  # between steps: the global patch serves it
        assert seen == 2 and calls == []
        assert comfyui._worker_settings == {}
    finally:
        for t, w in ((worker, work), (other, other_work)):
            w.put(None)
            t.join(timeout=10)


def test_patched_attention_under_torch_compile(comfy, rng):
    """ComfyUI's TorchCompileModel node compiles the diffusion model: dynamo then traces into arcattn's function.
    A compiled layer gives the eager answer with arcattn serving its call, and the node's setting still holds per
    call (off: the host's own function), not the one seen when it was compiled."""
    attention, _ = comfy
    from arcattn.hosts import comfyui
    comfyui.patch(attention)
    layer = attention.CrossAttention(64, heads=4, dim_head=16).requires_grad_(False)
    x = torch.randn(2, 12, 64, generator=rng)
    with torch.inference_mode():
        eager = layer(x)
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="eager")
    try:
        for setting, serves in ((None, 1), ((False, None), 0), (None, 1)):
            before = served_total()
            token = comfyui._model_setting.set(setting)
            try:
                with torch.inference_mode():
                    out = compiled(x)
            finally:
                comfyui._model_setting.reset(token)
            assert rel_error(out, eager) < 1e-5
            # not counted through the stand-in's CALLS: dynamo's replay of that list's appends does not reach a
            # module re-imported for the next test
            assert served_total() - before == serves
    finally:
        torch._dynamo.reset()


def test_node_package_import_patches_and_registers(comfy, rng):
    attention, _ = comfy
    for name in ("nodes", "_loader"):
        sys.modules.pop(name, None)
    spec = importlib.util.spec_from_file_location("arcattn_nodepkg", os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules["arcattn_nodepkg"] = pkg
    try:
        spec.loader.exec_module(pkg)
        assert "ArcAttention" in pkg.NODE_CLASS_MAPPINGS
        assert pkg.NODE_DISPLAY_NAME_MAPPINGS["ArcAttention"] == "Arc Attention"
        from arcattn.hosts import comfyui
        assert comfyui.is_patched()
        assert sys.modules["arcattn"] is arcattn  # one arcattn per process, whoever imported it first
    finally:
        for name in [n for n in sys.modules if n.startswith("arcattn_nodepkg")]:
            del sys.modules[name]


def test_node_passes_the_model_through_when_arcattn_cannot_load(comfy, monkeypatch, caplog):
    _, patcher = comfy
    import nodes as arc_nodes

    def broken():
        raise ImportError("arcattn broke")

    monkeypatch.setattr(arc_nodes, "load_arcattn", broken)
    model = patcher.ModelPatcher(object())
    with caplog.at_level(logging.ERROR, logger="arcattn"):
        (out,) = arc_nodes.ArcAttention().apply(model, enabled=True, backend="auto")
    assert out is model and any("passes through unchanged" in r.getMessage() for r in caplog.records)
    assert arc_nodes.ArcAttention.INPUT_TYPES()["required"]["backend"][0] == ["auto"]


# -- torch's SDPA backend order and ComfyUI's per-call sdpa_kernel(set_priority=True) --------------------------
def test_load_settles_the_sdpa_order_before_patching(comfy, monkeypatch):
    from arcattn.hosts import comfyui
    attention, _ = comfy
    order = []
    monkeypatch.setattr(comfyui, "settle_sdpa_order", lambda: order.append("settle"))
    real_patch = comfyui.patch
    monkeypatch.setattr(comfyui, "patch", lambda module=None: order.append("patch") or real_patch(module))
    assert comfyui.load(attention) is True
    assert order == ["settle", "patch"]


def test_settling_the_sdpa_order_is_quiet_when_it_cannot(monkeypatch):
    """No CUDA, no torch._fused_sdp_choice, or a failing CUDA call: nothing happens and nothing is raised."""
    from arcattn.hosts import comfyui
    calls = []
    monkeypatch.setattr(torch, "_fused_sdp_choice", lambda *a: calls.append(a), raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    comfyui.settle_sdpa_order()
    assert calls == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # but tensors cannot go to CUDA here
    if not torch.backends.cuda.is_built() or not torch.cuda.device_count():
        comfyui.settle_sdpa_order()  # the CUDA tensor fails; swallowed
        assert calls == []
    monkeypatch.delattr(torch, "_fused_sdp_choice")
    comfyui.settle_sdpa_order()


@pytest.mark.parametrize("host_device, settles",
                         [("cpu", False), ("cuda:1", True), (None, True), ("unreadable", False)])
def test_settling_follows_comfyuis_device(monkeypatch, host_device, settles):
    """Under --cpu ComfyUI's device is the CPU: no CUDA context is made. On a CUDA device the tiny input goes
    there. Outside a running ComfyUI (no comfy.model_management) torch's CUDA check decides. A loaded ComfyUI whose
    device cannot be read is not taken for a CUDA one."""
    import types
    from arcattn.hosts import comfyui
    calls, made = [], []
    monkeypatch.setattr(torch, "_fused_sdp_choice", lambda *a: calls.append(a), raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch, "zeros", lambda *shape, **kw: made.append(kw["device"]) or object())
    if host_device is None:
        monkeypatch.delitem(sys.modules, "comfy.model_management", raising=False)
    elif host_device == "unreadable":
        def fails():
            raise RuntimeError("model_management not initialised")
        monkeypatch.setitem(sys.modules, "comfy.model_management", types.SimpleNamespace(get_torch_device=fails))
        with pytest.raises(LookupError, match="not initialised"):
            comfyui._host_device()
    else:
        mm = types.SimpleNamespace(get_torch_device=lambda: torch.device(host_device))
        monkeypatch.setitem(sys.modules, "comfy.model_management", mm)
    comfyui.settle_sdpa_order()
    assert len(calls) == (1 if settles else 0)
    assert made == ([torch.device(host_device) if host_device else "cuda"] if settles else [])


SDPA_ORDER_PROBE = r"""
import sys, torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
q = torch.randn(1, 4096, 320, device="cuda", dtype=torch.float16).view(1, 4096, 8, 40).transpose(1, 2)
if sys.argv[1] != "fresh":
    if sys.argv[1] == "settle":
        from arcattn.hosts import comfyui
        comfyui.settle_sdpa_order()
    prio = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    with sdpa_kernel(prio, set_priority=True):  # what ComfyUI's comfy.ops does around each of its calls
        F.scaled_dot_product_attention(q, q, q)
print(int(torch._fused_sdp_choice(q, q, q)))
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: torch's SDPA order matters on CUDA only")
def test_settled_order_survives_comfyuis_first_sdpa_call():
    """After a ComfyUI-style first call, torch chooses the backend for SD1.5's largest call as a fresh process
    does, when settled first. Unsettled it chooses another (torch 2.11, Hopper: flash instead of cuDNN); where it
    does not, settle_sdpa_order is not needed on this torch and GPU, and the test says so."""
    import subprocess
    run = lambda mode: subprocess.run([sys.executable, "-c", SDPA_ORDER_PROBE, mode], capture_output=True,  # noqa: E731
                                      text=True, cwd=ROOT, check=True).stdout.strip()
    fresh = run("fresh")
    assert run("settle") == fresh
    if run("plain") == fresh:
        pytest.skip(f"this torch and GPU choose backend {fresh} after such a call even unsettled: "
                    "settle_sdpa_order is not needed here")


def test_unloadable_packages_stood_in_only_when_they_do_not_import():
    """tests/unloadable.py (used by the real-host scripts): a package that imports is left alone; one that does not
    gets an empty module with a spec and its usual submodules, so `from x.y import z`-style imports of unused
    models still resolve their modules."""
    import importlib.util
    import sys

    from unloadable import SUBMODULES, stand_in_unloadable
    name = "arcattn_no_such_package"
    SUBMODULES[name] = ("a", "a.b")
    try:
        assert stand_in_unloadable("json", name) == [name]
        assert sys.modules["json"].__spec__.origin  # the real one
        import arcattn_no_such_package.a.b as b  # noqa: F401
        assert importlib.util.find_spec(name) is not None and sys.modules[name].a.b is b
        from arcattn_no_such_package.a import Thing
        assert isinstance(Thing, type) and Thing.__name__ == "Thing" and not hasattr(b, "__version__")
    finally:
        SUBMODULES.pop(name)
        for m in [m for m in sys.modules if m.startswith(name)]:
            del sys.modules[m]
