"""diffusers: a small random-init UNet2DConditionModel gives the same output with arcattn's processor."""
import pytest
import torch

import arcattn
from arcattn.reference import rel_error

diffusers = pytest.importorskip("diffusers")
from arcattn.hosts import diffusers as arc_diffusers  # noqa: E402

# SD1.5's UNet config, scaled down (channels, layers, resolution); heads and the 77-token context kept
SMALL_SD = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=48,
                attention_head_dim=8, norm_num_groups=8)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(**SMALL_SD).eval()


def run(unet, gen):
    x = torch.randn(2, 4, 16, 16, generator=gen)
    ctx = torch.randn(2, 77, 48, generator=gen)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 500]), encoder_hidden_states=ctx).sample, (x, ctx)


def test_same_output_as_stock_processor_and_undo(unet, rng):
    state = rng.get_state()
    stock, _ = run(unet, rng)
    n = arc_diffusers.enable(unet)
    assert n == len(unet.attn_processors) and n > 0
    rng.set_state(state)
    ours, _ = run(unet, rng)
    assert rel_error(ours, stock) < 1e-5
    decisions = arcattn.get_router().decisions()
    assert any("Sk=77" in d["call"] for d in decisions) and any("Sk=77" not in d["call"] for d in decisions)
    arc_diffusers.disable(unet)
    assert all(type(p).__name__ == "AttnProcessor2_0" for p in unet.attn_processors.values())
    rng.set_state(state)
    again, _ = run(unet, rng)
    assert torch.equal(again, stock)


def test_disable_keeps_processors_set_after_enable(unet):
    """An IP-Adapter-style processor installed after enable() survives disable(); ours go back to the originals."""
    from diffusers.models.attention_processor import AttnProcessor
    stock = dict(unet.attn_processors)
    arc_diffusers.enable(unet)
    later_name = next(iter(stock))
    procs = dict(unet.attn_processors)
    procs[later_name] = later = AttnProcessor()
    unet.set_attn_processor(procs)
    arc_diffusers.disable(unet)
    now = unet.attn_processors
    assert now[later_name] is later
    assert all(now[n] is stock[n] for n in stock if n != later_name)


def test_processor_with_mask_and_forced_backend(unet, rng):
    attn = next(m for m in unet.modules() if isinstance(m, diffusers.models.attention_processor.Attention)
                and m.is_cross_attention)
    h = torch.randn(2, 64, attn.to_q.in_features, generator=rng)
    ctx = torch.randn(2, 77, 48, generator=rng)
    mask = torch.ones(2, 77, dtype=torch.bool)
    mask[:, 60:] = False
    stock = diffusers.models.attention_processor.AttnProcessor2_0()
    with torch.no_grad():
        ref = stock(attn, h, ctx, attention_mask=mask)
        out = arc_diffusers.ArcAttnProcessor(backend="sdpa")(attn, h, ctx, attention_mask=mask)
    assert rel_error(out, ref) < 1e-5


def test_processor_falls_back_when_arcattn_breaks(unet, rng, monkeypatch):
    attn = next(m for m in unet.modules() if isinstance(m, diffusers.models.attention_processor.Attention))
    h = torch.randn(1, 64, attn.to_q.in_features, generator=rng)
    monkeypatch.setattr(arc_diffusers, "make_call", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with torch.no_grad():
        ref = diffusers.models.attention_processor.AttnProcessor2_0()(attn, h)
        out = arc_diffusers.ArcAttnProcessor()(attn, h)
    assert rel_error(out, ref) < 1e-5


def test_processor_lets_torchs_checkpoint_stop_signal_through(unet, rng):
    """torch's checkpoint stops a recomputation by raising from inside an op: not a failure to serve again with the
    stock processor."""
    from arcattn.dispatch import CONTROL_FLOW
    assert CONTROL_FLOW, "this torch has no checkpoint stop signal to test"
    attn = next(m for m in unet.modules() if isinstance(m, diffusers.models.attention_processor.Attention))
    h = torch.randn(1, 64, attn.to_q.in_features, generator=rng)

    class Stopping:
        def run(self, call, prefer=None):
            raise CONTROL_FLOW[0]()
    proc = arc_diffusers.ArcAttnProcessor()
    proc.router = Stopping()
    with torch.no_grad(), pytest.raises(CONTROL_FLOW[0]):
        proc(attn, h)


@pytest.mark.parametrize("fail", [False, True])
def test_processor_follows_every_stock_step(rng, fail):
    """qk norms, a 4-D (image) input, the residual, rescale_output_factor and a padding mask, against the stock
    processor; fail=True takes the processor's own fallback (the router raising) with the same mask."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0
    torch.manual_seed(int(torch.randint(1 << 30, (1,), generator=rng)))
    attn = Attention(query_dim=32, cross_attention_dim=24, heads=4, dim_head=8, qk_norm="layer_norm",
                     residual_connection=True, rescale_output_factor=2.0).eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=rng) * 0.3 + (1.0 if p.ndim == 1 else 0.0))
    h = torch.randn(2, 32, 4, 5, generator=rng)
    ctx = torch.randn(2, 9, 24, generator=rng)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 6:] = False
    proc = arc_diffusers.ArcAttnProcessor()
    if fail:
        class Broken:
            def run(self, call, prefer=None):
                raise RuntimeError("router exploded")
        proc.router = Broken()
    with torch.no_grad():
        ref = AttnProcessor2_0()(attn, h, ctx, attention_mask=mask)
        out = proc(attn, h, ctx, attention_mask=mask)
        unmasked = AttnProcessor2_0()(attn, h, ctx)
    assert out.shape == h.shape
    assert rel_error(out, ref) < 1e-5 and rel_error(unmasked, ref) > 1e-3  # the mask mattered


def test_enable_keeps_processors_it_does_not_know(unet):
    """IP-Adapter, added-KV or LoRA-style processors keep theirs; only the plain ones are replaced."""
    class IPAdapterLike(diffusers.models.attention_processor.AttnProcessor2_0):
        pass
    name = next(iter(unet.attn_processors))
    procs = dict(unet.attn_processors)
    procs[name] = custom = IPAdapterLike()
    total = len(procs)
    unet.set_attn_processor(procs)  # (consumes the dict)
    try:
        n = arc_diffusers.enable(unet)
        assert n == total - 1 and unet.attn_processors[name] is custom
    finally:
        arc_diffusers.disable(unet)
        unet.set_attn_processor(diffusers.models.attention_processor.AttnProcessor2_0())


def _attention_module(rng, **kw):
    from diffusers.models.attention_processor import Attention
    torch.manual_seed(int(torch.randint(1 << 30, (1,), generator=rng)))
    attn = Attention(**kw).eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=rng) * p.shape[-1] ** -0.5)
    return attn


@pytest.mark.parametrize("kw,stock_name", [
    (dict(query_dim=32, heads=4, dim_head=8, scale_qk=False), "AttnProcessor"),  # diffusers' default there
    (dict(query_dim=32, heads=2, dim_head=40, out_dim=96), "AttnProcessor2_0"),  # head dim 48, attn.scale 40**-0.5
])
def test_processor_scales_as_the_modules_default_processor(rng, kw, stock_name):
    """Without scale_qk diffusers picks the classic processor, which applies attn.scale (1.0); otherwise the SDPA
    processor, which applies SDPA's own 1/sqrt(head dim) whatever attn.scale says (they differ with an out_dim
    that is not heads x dim_head). arcattn must give the answer of the processor it replaces."""
    attn = _attention_module(rng, **kw)
    assert type(attn.processor).__name__ == stock_name
    h = torch.randn(2, 13, 32, generator=rng)
    with torch.no_grad():
        ref = attn.processor(attn, h)
        out = arc_diffusers.ArcAttnProcessor()(attn, h)
    assert rel_error(out, ref) < 1e-5


def test_unservable_call_gives_the_stock_answer_or_its_error(rng, caplog):
    """A call arcattn cannot serve goes whole to the stock processor: its answer where it has one (a context of
    batch 2 for hidden states of batch 1), its error where it raises (2-D hidden states), one log line."""
    from diffusers.models.attention_processor import AttnProcessor2_0
    attn = _attention_module(rng, query_dim=32, cross_attention_dim=32, heads=4, dim_head=8)
    h, ctx = torch.randn(1, 10, 32, generator=rng), torch.randn(2, 5, 32, generator=rng)
    proc = arc_diffusers.ArcAttnProcessor()
    with torch.no_grad(), caplog.at_level("WARNING", logger="arcattn"):
        ref = AttnProcessor2_0()(attn, h, ctx)
        for _ in range(2):
            out = proc(attn, h, ctx)
            assert out.shape == ref.shape and torch.equal(out, ref)
        flat = torch.randn(10, 32, generator=rng)
        with pytest.raises(Exception) as stock_error:
            AttnProcessor2_0()(attn, flat)
        with pytest.raises(type(stock_error.value)):
            proc(attn, flat)
    assert sum("stock processor serves it" in r.getMessage() for r in caplog.records) == 2  # one per reason


def test_enable_logs_how_many_of_how_many(unet, caplog):
    with caplog.at_level("INFO", logger="arcattn"):
        n = arc_diffusers.enable(unet)
    arc_diffusers.disable(unet)
    assert f"arcattn serves {n} of {n} attention modules" in caplog.text
