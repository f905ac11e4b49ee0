"""One attention call, checked and normalised: what every backend receives.

Validation is the expensive part of a call, and it depends only on shapes, dtypes, devices and flags, so it is
done once per *signature* and remembered; a repeated call pays for one tuple and one dict lookup.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

# "bsd":  (B, S, H*D), heads packed in the last dim: ComfyUI/Forge default, diffusers after to_q.
# "bhsd": (B, H, S, D): ComfyUI skip_reshape=True, torch SDPA's own layout.
# "bshd": (B, S, H, D): flash-attn / Flux style.
LAYOUTS = ("bsd", "bhsd", "bshd")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_MAX_REMEMBERED = 4096


class Geometry:
    """What validation learned about one signature. Shared by every call with that signature."""

    __slots__ = ("layout", "out_layout", "B", "H", "Sq", "Sk", "D", "Dv", "mask_ndim")

    def __init__(self, layout, out_layout, B, H, Sq, Sk, D, Dv, mask_ndim):
        self.layout = layout
        self.out_layout = out_layout
        self.B, self.H, self.Sq, self.Sk, self.D, self.Dv = B, H, Sq, Sk, D, Dv
        self.mask_ndim = mask_ndim


_geometry: dict = {}


class AttentionCall:
    """q, k, v in the caller's layout plus everything a backend needs to serve them.

    `q4`/`k4`/`v4` are (B, H, S, D) views (no copy); `strides4(t)` gives the same strides without building a
    view; `empty_out()` allocates the output in the caller's layout and returns a (B, H, Sq, Dv) view into it.
    """

    __slots__ = ("q", "k", "v", "mask", "scale", "default_scale", "causal", "want_lse", "needs_grad", "key",
                 "layout", "out_layout", "B", "H", "Sq", "Sk", "D", "Dv", "dtype", "device")

    def __init__(self, q, k, v, mask, scale, causal, want_lse, key, geo: Geometry, default_scale: bool = False,
                 needs_grad: bool = False):
        self.q, self.k, self.v = q, k, v
        self.mask = mask
        self.scale = scale
        self.default_scale = default_scale  # scale is 1/sqrt(D): backends may leave it to their own default
        self.causal = causal
        self.want_lse = want_lse
        self.needs_grad = needs_grad  # autograd will want a backward through this call
        self.key = key
        self.layout, self.out_layout = geo.layout, geo.out_layout
        self.B, self.H, self.Sq, self.Sk, self.D, self.Dv = geo.B, geo.H, geo.Sq, geo.Sk, geo.D, geo.Dv
        self.dtype = q.dtype
        self.device = q.device

    # -- views in (B, H, S, D) ------------------------------------------------------------------------------
    def _as4(self, t: torch.Tensor, d: int) -> torch.Tensor:
        if self.layout == "bhsd":
            return t
        # one as_strided instead of unflatten + transpose: on a GPU host each view op costs microseconds,
        # and these three run on every call that reaches SDPA
        return t.as_strided((self.B, self.H, t.shape[1], d), self.strides4(t))

    def views4(self) -> tuple:
        """(q4, k4, v4) at once: the hot path of every SDPA call, so written out rather than composed."""
        q, k, v = self.q, self.k, self.v
        if self.layout == "bhsd":
            return q, k, v
        if self.layout == "bshd":
            return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        B, H, D, Dv, Sk = self.B, self.H, self.D, self.Dv, self.Sk
        a, b, c = q.stride(), k.stride(), v.stride()
        return (q.as_strided((B, H, self.Sq, D), (a[0], D * a[2], a[1], a[2])),
                k.as_strided((B, H, Sk, D), (b[0], D * b[2], b[1], b[2])),
                v.as_strided((B, H, Sk, Dv), (c[0], Dv * c[2], c[1], c[2])))

    @property
    def q4(self) -> torch.Tensor:
        return self._as4(self.q, self.D)

    @property
    def k4(self) -> torch.Tensor:
        return self._as4(self.k, self.D)

    @property
    def v4(self) -> torch.Tensor:
        return self._as4(self.v, self.Dv)

    @property
    def unit_stride(self) -> bool:
        """Each row's head dim is contiguous in q, k and v (what 2-D block loads and the native kernel need)."""
        return _unit_stride(self.q, self.k, self.v)

    def strides4(self, t: torch.Tensor) -> tuple:
        """Strides of `t` seen as (B, H, S, D), from integer arithmetic alone."""
        s = t.stride()
        if self.layout == "bhsd":
            return s
        if self.layout == "bshd":
            return (s[0], s[2], s[1], s[3])
        d = self.D if t is not self.v else self.Dv
        return (s[0], d * s[2], s[1], s[2])

    def empty_out(self, dtype: Optional[torch.dtype] = None) -> tuple:
        """(output in the caller's layout, the same memory as a (B, H, Sq, Dv) view)."""
        B, H, Sq, Dv = self.B, self.H, self.Sq, self.Dv
        dtype = dtype or self.dtype
        if self.out_layout == "bhsd":
            out = torch.empty((B, H, Sq, Dv), dtype=dtype, device=self.device)
            return out, out
        if self.out_layout == "bshd":
            out = torch.empty((B, Sq, H, Dv), dtype=dtype, device=self.device)
            return out, out.transpose(1, 2)
        out = torch.empty((B, Sq, H * Dv), dtype=dtype, device=self.device)
        return out, out.view(B, Sq, H, Dv).transpose(1, 2)

    def to_caller(self, out4: torch.Tensor) -> torch.Tensor:
        """A (B, H, Sq, Dv) result in the caller's output layout (a copy only where the layout needs one)."""
        if self.out_layout == "bhsd":
            return out4
        out = out4.transpose(1, 2)
        if self.out_layout == "bshd":
            return out
        return out.reshape(self.B, self.Sq, self.H * self.Dv)

    def describe(self) -> str:
        m = "none" if self.mask is None else f"{str(self.mask.dtype).replace('torch.', '')}{tuple(self.mask.shape)}"
        return (f"B={self.B} H={self.H} Sq={self.Sq} Sk={self.Sk} D={self.D}"
                + (f" Dv={self.Dv}" if self.Dv != self.D else "")
                + f" {str(self.dtype).replace('torch.', '')} {self.device.type} {self.layout}->{self.out_layout}"
                + f" mask={m}" + (" causal" if self.causal else "") + (" lse" if self.want_lse else ""))


def make_call(q, k, v, *, heads: Optional[int] = None, layout: Optional[str] = None,
              out_layout: Optional[str] = None, mask: Optional[torch.Tensor] = None,
              scale: Optional[float] = None, causal: bool = False, want_lse: bool = False) -> AttentionCall:
    """Check the arguments (raising TypeError/ValueError that name the problem) and build the call."""
    # checked before the geometry cache: 4.0, numpy's 4 or True hash like an int that was accepted before
    if heads is not None and (isinstance(heads, bool) or not isinstance(heads, int) or heads <= 0):
        raise ValueError(f"heads must be a positive int, got {heads!r}")
    for name, flag in (("causal", causal), ("return_lse", want_lse)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    try:
        needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
        key = (q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, q.device, k.device, v.device, heads,
               layout, out_layout,
               None if mask is None else (mask.shape, mask.dtype, mask.device),
               bool(causal), bool(want_lse), _unit_stride(q, k, v),
               needs_grad)
        geo = _geometry.get(key)
    except (AttributeError, TypeError, IndexError, RuntimeError):  # not tensors, unhashable arguments, ...
        key = geo = None
        needs_grad = False
    if geo is None:
        geo = _validate(q, k, v, heads, layout, out_layout, mask)
        if key is not None:
            if len(_geometry) >= _MAX_REMEMBERED:
                _geometry.clear()
            _geometry[key] = geo
    if scale is None:
        scale, default_scale = 1.0 / math.sqrt(geo.D), True
    else:
        scale = _check_scale(scale)
        # a scale that equals 1/sqrt(D) to the inputs' precision takes the default path (hosts compute it their way)
        default_scale = abs(scale * math.sqrt(geo.D) - 1.0) < (1e-14 if q.dtype == torch.float64 else 1e-6)
    if mask is not None:
        if geo.mask_ndim == 2:
            mask = mask[None, None]
        elif geo.mask_ndim == 3:
            mask = mask[:, None]
    return AttentionCall(q, k, v, mask, scale, bool(causal), bool(want_lse), key, geo, default_scale, needs_grad)


def _unit_stride(q, k, v) -> bool:
    return q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1


def _check_scale(scale) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a number, got {type(scale).__name__}")
    try:
        scale = float(scale)
    except OverflowError:
        scale = math.inf
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return scale


def _validate(q, k, v, heads, layout, out_layout, mask) -> Geometry:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.layout != torch.strided:
            raise TypeError(f"{name} must be a dense tensor, got layout {t.layout}")
    if layout is None:
        layout = "bsd" if q.dim() == 3 else "bhsd"
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    out_layout = layout if out_layout is None else out_layout
    if out_layout not in LAYOUTS:
        raise ValueError(f"out_layout must be one of {LAYOUTS}, got {out_layout!r}")
    rank = 3 if layout == "bsd" else 4
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != rank:
            raise ValueError(f"{name} must be {rank}-D for layout {layout!r} "
                             f"({'(B, S, H*D)' if rank == 3 else layout.upper()}), got shape {tuple(t.shape)}")
    if q.dtype not in FLOAT_DTYPES:
        raise TypeError(f"q must be a floating tensor (float16, bfloat16, float32, float64), got {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")

    if layout == "bsd":
        if heads is None:
            raise ValueError("heads is required for layout 'bsd' (B, S, H*D)")
        for name, t in (("q", q), ("k", k), ("v", v)):
            if t.shape[-1] % heads:
                raise ValueError(f"{name}'s last dim {t.shape[-1]} is not divisible by heads={heads}")
        B, Sq, _ = q.shape
        H, D, Sk, Dv = heads, q.shape[-1] // heads, k.shape[1], v.shape[-1] // heads
        kB, kD, vB, vS = k.shape[0], k.shape[-1] // heads, v.shape[0], v.shape[1]
        kH = vH = heads
    else:
        if layout == "bhsd":
            B, H, Sq, D = q.shape
            kB, kH, Sk, kD = k.shape
            vB, vH, vS, Dv = v.shape
        else:
            B, Sq, H, D = q.shape
            kB, Sk, kH, kD = k.shape
            vB, vS, vH, Dv = v.shape
        if heads is not None and heads != H:
            raise ValueError(f"heads={heads} does not match q's {H} heads")
    if kB != B or vB != B:
        raise ValueError(f"batch mismatch: q has {B}, k has {kB}, v has {vB}")
    if kH != H or vH != H:
        raise ValueError(f"heads mismatch: q has {H}, k has {kH}, v has {vH} (grouped-query attention is not supported)")
    if kD != D:
        raise ValueError(f"head-dim mismatch: q has {D}, k has {kD}")
    if vS != Sk:
        raise ValueError(f"sequence mismatch: k has {Sk} tokens, v has {vS}")
    for name, n in (("batch", B), ("query length", Sq), ("key length", Sk), ("head dim", D), ("value head dim", Dv)):
        if n == 0:
            raise ValueError(f"{name} is zero: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")

    mask_ndim = None
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
        if mask.layout != torch.strided:
            raise TypeError(f"mask must be a dense tensor, got layout {mask.layout}")
        if mask.dtype != torch.bool and not mask.is_floating_point():
            raise TypeError(f"mask must be bool (True = attend) or floating (added to scores), got {mask.dtype}")
        if mask.device != q.device:
            raise ValueError(f"mask is on {mask.device}, q on {q.device}")
        if mask.dim() not in (2, 3, 4):
            raise ValueError(f"mask must be 2-D, 3-D or 4-D, got shape {tuple(mask.shape)}")
        mask_ndim = mask.dim()
        shape4 = (1,) * (4 - mask.dim()) + tuple(mask.shape)
        if mask.dim() == 3:
            shape4 = (shape4[1], 1, shape4[2], shape4[3])
        for got, want, what in zip(shape4, (B, H, Sq, Sk), ("batch", "heads", "query", "key")):
            if got not in (1, want):
                raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to (B, H, Sq, Sk) = "
                                 f"{(B, H, Sq, Sk)}: its {what} dim is {got}")
    return Geometry(layout, out_layout, B, H, Sq, Sk, D, Dv, mask_ndim)
