"""The `triton` backend: arcattn's own flash-attention kernel (arcattn/kernels/flash.py) on CUDA and Intel XPU.

The kernel reads q, k, v in the caller's layout through their strides and writes the output straight into a
tensor in the caller's output layout (the memory of `call.empty_out()`), so there are no transposes or copies
around it. Everything that depends only on the call's signature (tiles, grid, output shape and strides) is
computed on the first call and cached; a repeated call costs a dict lookup, one or two allocations and the
launch.

On the CPU it runs only in Triton's interpreter, which exists for the tests: with TRITON_INTERPRET=1 *and*
ARCATTN_TRITON_CPU=1. The second switch keeps the interpreter out of every other CPU call (a small UNet test
would otherwise spend a minute interpreting attention that SDPA does in milliseconds).
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch

from ..call import AttentionCall
from ..env import env_flag
from .base import Backend

log = logging.getLogger("arcattn")

# The interpreter is a test tool: it declines anything bigger than this many multiply-adds (B*H*Sq*Sk*D).
try:
    INTERPRETER_MAX_WORK = int(os.environ.get("ARCATTN_TRITON_INTERPRET_MAX", 1 << 25))
except ValueError:
    INTERPRETER_MAX_WORK = 1 << 25
MAX_GRID_BH = 65535  # batch x heads sits on grid axis 1


class _Entry:
    """Per-signature launch state."""

    __slots__ = ("plan", "plan_ptr", "out_shape", "so", "lse_shape", "guard", "check_desc")

    def __init__(self, plan, out_shape, so, lse_shape, guard, check_desc):
        self.plan = plan
        self.plan_ptr = None  # pointer-path plan for calls whose tensors are not descriptor-aligned (XPU)
        self.out_shape, self.so, self.lse_shape = out_shape, so, lse_shape
        self.guard = guard
        self.check_desc = check_desc


class TritonBackend(Backend):
    name = "triton"
    description = "Triton flash attention (CUDA, Intel XPU; CPU only in the Triton interpreter)"
    device_types = ("cuda", "xpu", "cpu")
    dtypes = (torch.float16, torch.bfloat16, torch.float32)
    max_head_dim = 256
    supports_mask = False  # masked calls go to SDPA
    supports_causal = True
    supports_lse = True
    supports_dv_ne_d = False

    def __init__(self):
        self._flash = None
        self._configs = None
        self._entries: dict = {}

    # -- availability ---------------------------------------------------------------------------------------
    def probe(self) -> Optional[str]:
        try:
            import triton  # noqa: F401
        except Exception as e:  # noqa: BLE001
            return f"Triton is not importable ({type(e).__name__}: {e})"
        try:
            from ..kernels import configs, flash
        except Exception as e:  # noqa: BLE001
            return f"the Triton kernel failed to load ({type(e).__name__}: {e})"
        self._flash, self._configs = flash, configs
        if flash.interpreted():
            return None
        has_cuda = torch.cuda.is_available()
        has_xpu = hasattr(torch, "xpu") and torch.xpu.is_available()
        if not (has_cuda or has_xpu):
            return ("no CUDA or XPU device for Triton; on the CPU it runs only in its interpreter "
                    "(TRITON_INTERPRET=1, a test tool)")
        try:
            from triton.runtime import driver
            driver.active.get_current_target()
        except Exception as e:  # noqa: BLE001
            return f"Triton has no working driver for this device ({type(e).__name__}: {e})"
        return None

    def extra_reasons(self, call: AttentionCall) -> list:
        if self._flash is None and self.unavailable_reason() is not None:
            return [self.unavailable_reason()]
        reasons = []
        dev = call.device.type
        interp = self._flash.interpreted()
        if dev == "cpu" and not interp:
            reasons.append("Triton runs on the CPU only in its interpreter (TRITON_INTERPRET=1), a test tool")
        elif dev == "cpu" and not env_flag("ARCATTN_TRITON_CPU", False):
            reasons.append("the Triton interpreter is a test tool: it serves CPU calls only with ARCATTN_TRITON_CPU=1")
        if dev != "cpu" and interp:
            reasons.append("TRITON_INTERPRET=1 is set: Triton would interpret, not compile, this GPU call")
        if interp and call.B * call.H * call.Sq * call.Sk * max(call.D, 16) > INTERPRETER_MAX_WORK:
            reasons.append(f"too large for the Triton interpreter, a test tool (B*H*Sq*Sk*D > {INTERPRETER_MAX_WORK};"
                           " ARCATTN_TRITON_INTERPRET_MAX raises it)")
        if call.B * call.H > MAX_GRID_BH:
            reasons.append(f"batch x heads = {call.B * call.H} exceeds the kernel's grid limit {MAX_GRID_BH}")
        if max(call.Sq, call.Sk) * call.H * max(call.D, call.Dv) >= 1 << 31:
            reasons.append("sequence x heads x head dim >= 2^31 elements: the kernel's 32-bit offsets within a"
                           " batch entry would overflow")
        if dev == "cuda" and not interp:
            major, minor = torch.cuda.get_device_capability(call.device)
            if (major, minor) < (7, 5):
                reasons.append(f"compute capability {major}.{minor} < 7.5 (Triton's minimum for this kernel)")
            elif call.dtype == torch.bfloat16 and major < 8:
                reasons.append(f"bfloat16 needs compute capability 8.0+, this GPU is {major}.{minor}")
        return reasons

    def slower_reasons(self, call: AttentionCall) -> list:
        """Shapes where this kernel measured slower than torch's best SDPA (configs.measured_losses): the
        priority policy leaves them to SDPA; the measured policy and `backend="triton"` still use the kernel."""
        if self._flash is None or self._flash.interpreted():
            return []
        return self._configs.measured_losses(
            self._configs.device_info(call.device.type, call.device.index or 0, False), call)

    # -- the hot path ---------------------------------------------------------------------------------------
    def run(self, call: AttentionCall):
        key = call.key
        e = self._entries.get(key) if key is not None else None
        if e is None:
            e = self._prepare(call)
        out = torch.empty(e.out_shape, dtype=call.dtype, device=call.device)
        lse = torch.empty(e.lse_shape, dtype=torch.float32, device=call.device) if call.want_lse else None
        q, k, v = call.q, call.k, call.v
        sq, sk, sv = call.strides4(q), call.strides4(k), call.strides4(v)
        plan = e.plan
        if e.check_desc and not self._flash.descriptors_ok(((q, sq), (k, sk), (v, sv), (out, e.so)),
                                                           q.element_size()):
            plan = e.plan_ptr or self._pointer_plan(e, call)
        if not plan.verified:
            self._first_launch(e, plan, call, q, k, v, out, lse, sq, sk, sv)
        elif e.guard:
            with _device_guard(call.device):
                self._flash.launch(plan, q, k, v, out, lse, sq, sk, sv, e.so, call.scale, call.H, call.Sq, call.Sk)
        else:
            self._flash.launch(plan, q, k, v, out, lse, sq, sk, sv, e.so, call.scale, call.H, call.Sq, call.Sk)
        return (out, lse) if call.want_lse else out

    # -- first call of a signature --------------------------------------------------------------------------
    def _prepare(self, call: AttentionCall) -> _Entry:
        if self._flash is None:
            why = self.unavailable_reason()
            if why:
                raise RuntimeError(f"triton backend unavailable: {why}")
        flash, configs = self._flash, self._configs
        info = configs.device_info(call.device.type, call.device.index or 0, flash.interpreted())
        out, out4 = call.empty_out()  # the caller's output layout: remember its shape and (B, H, S, D) strides
        plan = self._new_plan(call, info.use_descriptors and call.unit_stride)
        guard = (call.device.type == "cuda" and torch.cuda.device_count() > 1) or (
            call.device.type == "xpu" and torch.xpu.device_count() > 1)
        e = _Entry(plan, tuple(out.shape), tuple(out4.stride()), (call.B, call.H, call.Sq), guard,
                   plan.kwargs["USE_DESC"])
        if call.key is not None:
            if len(self._entries) > 4096:
                self._entries.clear()
            self._entries[call.key] = e
        log.debug("triton: %s -> %s", call.describe(), plan.describe())
        return e

    def _new_plan(self, call: AttentionCall, use_desc: bool, config=None, splits=None, head=None):
        flash = self._flash
        plan = flash.Plan(call.device, call.dtype, call.B, call.H, call.Sq, call.Sk, call.D, causal=call.causal,
                          want_lse=call.want_lse, use_descriptors=use_desc, config=config, splits=splits, head=head)
        if config is None and env_flag("ARCATTN_TRITON_AUTOTUNE", False) and not flash.interpreted():
            plan = self._autotune(call, plan, use_desc)
        return plan

    def _pointer_plan(self, e: _Entry, call: AttentionCall):
        p = e.plan
        e.plan_ptr = self._new_plan(call, False, config=p.config, splits=p.splits, head=p.heads)
        return e.plan_ptr

    def _first_launch(self, e, plan, call, q, k, v, out, lse, sq, sk, sv) -> None:
        """Launch, stepping down the tile configuration if the compiler says it does not fit the device."""
        import triton
        from dataclasses import replace
        for _ in range(8):
            try:
                with _device_guard(call.device):
                    self._flash.launch(plan, q, k, v, out, lse, sq, sk, sv, e.so, call.scale, call.H, call.Sq,
                                       call.Sk)
                plan.verified = True
                return
            except triton.runtime.errors.OutOfResources as err:
                c = plan.config
                info = self._configs.device_info(call.device.type, call.device.index or 0, False)
                if c.q_tiles > 0:  # the short-keys kernel holds all keys and values on chip: the flash kernel
                    smaller = replace(c, q_tiles=0)
                elif c.num_stages > self._configs.MIN_STAGES[info.family]:
                    smaller = replace(c, num_stages=c.num_stages - 1)
                elif c.block_n > 16:
                    smaller = replace(c, block_n=c.block_n // 2)
                elif c.block_m > 16:
                    smaller = replace(c, block_m=c.block_m // 2)
                else:
                    raise
                log.info("triton: %s does not fit (%s); trying %s", c.short(), err, smaller.short())
            except RuntimeError as err:  # older Triton-XPU spells the 256-register mode "large"
                c = plan.config
                if c.grf_mode != "256" or "grf_mode" not in str(err):
                    raise
                smaller = replace(c, grf_mode="large")
            new = self._new_plan(call, plan.kwargs["USE_DESC"], config=smaller, splits=plan.splits, head=plan.heads)
            if plan is e.plan:
                e.plan = new
            else:
                e.plan_ptr = new
            plan = new
        raise RuntimeError("triton: no tile configuration fits this device")

    def _autotune(self, call: AttentionCall, plan, use_desc: bool):
        """Time each candidate configuration on this call's own inputs and keep the fastest (opt-in)."""
        import triton.testing
        flash, configs = self._flash, self._configs
        info = configs.device_info(call.device.type, call.device.index or 0, False)
        q, k, v = call.q, call.k, call.v
        sq, sk, sv = call.strides4(q), call.strides4(k), call.strides4(v)
        out, out4 = call.empty_out()
        lse = torch.empty((call.B, call.H, call.Sq), dtype=torch.float32, device=call.device) if call.want_lse else None
        best, best_t = plan, float("inf")
        # the plan's own choice is a candidate too, and every candidate keeps the plan's head split
        width = max(plan.D0 + plan.D1, plan.E0 + plan.E1)
        for cfg in (plan.config,) + tuple(c for c in configs.candidates(info, width) if c != plan.config):
            cand = flash.Plan(call.device, call.dtype, call.B, call.H, call.Sq, call.Sk, call.D,
                              causal=call.causal, want_lse=call.want_lse, use_descriptors=use_desc, config=cfg,
                              splits=plan.splits, head=plan.heads)
            try:
                with _device_guard(call.device):
                    t = triton.testing.do_bench(
                        lambda: flash.launch(cand, q, k, v, out, lse, sq, sk, sv, tuple(out4.stride()),
                                             call.scale, call.H, call.Sq, call.Sk),
                        warmup=5, rep=25, return_mode="median")
            except Exception as err:  # noqa: BLE001 - a candidate that does not compile is skipped
                log.debug("triton autotune: %s failed: %s", cfg.short(), err)
                continue
            if t < best_t:
                best, best_t = cand, t
        best.verified = True
        log.info("triton autotune: %s -> %s (%.1f us)", call.describe(), best.describe(), best_t * 1e3)
        return best


class _device_guard:
    """Make `device` current for the launch (Triton launches on the current device)."""

    __slots__ = ("device", "ctx")

    def __init__(self, device: torch.device):
        self.device = device
        self.ctx = None

    def __enter__(self):
        if self.device.type == "cuda":
            self.ctx = torch.cuda.device(self.device)
        elif self.device.type == "xpu":
            self.ctx = torch.xpu.device(self.device)
        if self.ctx is not None:
            self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        if self.ctx is not None:
            return self.ctx.__exit__(*exc)
        return False
