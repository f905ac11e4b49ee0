"""The router: which backend serves a call, decided once per call signature.

Rule: a backend is eligible when it is available, not disabled, not marked broken for this signature, and has
no reasons against the call. Among the eligible, the policy chooses: fixed priority (which also skips a backend
that declares itself measured slower there, `slower_reasons`), or a `chooser` such as measured tuning. A fast backend that raises is logged, marked broken for (backend,
signature) for the rest of the process, and the call is served by the fallback: the host never sees it.

Per call the router costs one tuple, one dict lookup and one counter increment; telemetry is derived from the
per-signature decisions only when somebody asks for it.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Callable, Iterable, Optional

import torch

from .backends.base import Backend
from .call import AttentionCall

log = logging.getLogger("arcattn")

_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # torch < 2.5: CUDA's only

# Exceptions torch uses for control flow through a call, not failures: non-reentrant checkpointing stops its
# recomputation by raising this from inside the op that saves the last tensor it needs. Never a fallback.
try:
    import torch.utils.checkpoint as _checkpoint
except Exception:  # noqa: BLE001 - a torch without it has no such signal
    _checkpoint = None
CONTROL_FLOW = tuple(c for c in (getattr(_checkpoint, "_StopRecomputationError", None),) if isinstance(c, type))


def preferred(backend: Optional[str]) -> Optional[str]:
    """The backend a caller asked for, or None where the router decides (None, "" or "auto")."""
    return None if backend in (None, "", "auto") else backend


class BackendUnsupported(ValueError):
    """A backend named explicitly through the public API cannot serve the call."""


class Decision:
    __slots__ = ("backend", "declined", "calls", "describe")

    def __init__(self, backend: Backend, declined: list, describe: str):
        self.backend = backend
        self.declined = declined  # [(backend name, "reason; reason")] for available backends ahead of the choice
        self.calls = 0
        self.describe = describe


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception as one short line ("Type: first line of the message"), for logs, telemetry and reasons."""
    text = str(e)
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:limit]


def _env_list(name: str) -> set:
    return {s.strip() for s in os.environ.get(name, "").split(",") if s.strip()}


class Router:
    def __init__(self, backends: Iterable[Backend], *, disabled: Optional[Iterable[str]] = None,
                 prefer: Optional[str] = None, chooser: Optional[Callable] = None):
        self.backends = list(backends)
        fallbacks = [b for b in self.backends if b.is_fallback]
        if not fallbacks:
            raise ValueError("a router needs a fallback backend")
        self.fallback = fallbacks[0]
        self.disabled = set(_env_list("ARCATTN_DISABLE") if disabled is None else disabled)
        self.disabled.discard(self.fallback.name)
        from_env = prefer is None
        prefer = (os.environ.get("ARCATTN_BACKEND", "") if from_env else prefer).strip()
        if from_env and preferred(prefer) and prefer not in (b.name for b in self.backends):
            log.warning("ARCATTN_BACKEND=%r names no backend (known: %s); ignored", prefer,
                        ", ".join(b.name for b in self.backends))
            prefer = ""
        self.prefer = preferred(prefer)
        self.chooser = chooser
        self._decisions: dict = {}
        self._broken: set = set()
        self._failures: Counter = Counter()
        self._logged: set = set()
        self._retired: list = []  # decisions replaced after a failure; their counts still count

    # -- lookup ---------------------------------------------------------------------------------------------
    def backend(self, name: str) -> Backend:
        for b in self.backends:
            if b.name == name:
                return b
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(b.name for b in self.backends)}")

    # -- the hot path ---------------------------------------------------------------------------------------
    def run(self, call: AttentionCall, prefer: Optional[str] = None, strict: bool = False):
        """Serve `call`. `prefer` names a backend to try first; `strict` raises instead of falling back."""
        dkey = (call.key, prefer, strict)
        d = self._decisions.get(dkey)
        if d is None:
            d = self.decide(call, prefer, strict)
            if call.key is not None:  # no signature, no reuse: such calls are decided one by one
                self._decisions[dkey] = d
        d.calls += 1
        b = d.backend
        if strict or b is self.fallback:
            return b.run(call)
        try:
            return b.run(call)
        except CONTROL_FLOW:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of a fast path must become a fallback
            return self._failed(dkey, d, call, e)

    # -- decisions ------------------------------------------------------------------------------------------
    def decide(self, call: AttentionCall, prefer: Optional[str] = None, strict: bool = False) -> Decision:
        prefer = preferred(prefer) or self.prefer
        passed_over = []
        if prefer:
            b = self.backend(prefer)
            why = b.unavailable_reason()
            reasons = [why] if why else b.unsupported_reasons(call)
            if b.name in self.disabled:
                reasons.insert(0, "disabled by ARCATTN_DISABLE")
            if (b.name, call.key) in self._broken:
                reasons.append("marked broken after an error")
            if not reasons:
                return Decision(b, [], call.describe())
            if strict:
                raise BackendUnsupported(f"backend {prefer!r} cannot serve this call ({call.describe()}): "
                                         + "; ".join(reasons))
            # the preferred backend comes first, not alone: the rest of the order still applies
            passed_over = [(b.name, "; ".join(reasons))]
        eligible, declined = [], []
        for b in self.backends:
            if b.name in self.disabled or not b.available() or (passed_over and b.name == passed_over[0][0]):
                continue
            if (b.name, call.key) in self._broken:
                declined.append((b.name, "marked broken after an error"))
                continue
            reasons = b.unsupported_reasons(call)
            if not reasons and self.chooser is None:  # priority order: heed measured losses
                reasons = b.slower_reasons(call)
            if reasons:
                declined.append((b.name, "; ".join(reasons)))
            else:
                eligible.append(b)
        choice = eligible[0]
        if self.chooser is not None and len(eligible) > 1:
            try:
                choice = self.chooser(call, eligible)
            except Exception as e:  # noqa: BLE001 - measuring is an optimisation; priority order still works
                if "chooser" not in self._logged:
                    self._logged.add("chooser")
                    log.warning("measuring backends failed on %s (%s: %s); using priority order",
                                call.describe(), type(e).__name__, e)
        ahead = {b.name for b in self.backends[:self.backends.index(choice)]}
        declined = passed_over + [(n, r) for n, r in declined if n in ahead]
        return self._log_decision(Decision(choice, declined, call.describe()))

    def _log_decision(self, d: Decision) -> Decision:
        if log.isEnabledFor(logging.DEBUG):
            extra = "".join(f"; {n} declined: {r}" for n, r in d.declined)
            log.debug("route %s -> %s%s", d.describe, d.backend.name, extra)
        return d

    def _failed(self, dkey, d: Decision, call: AttentionCall, e: Exception):
        name = d.backend.name
        what = one_line(e)
        # out of device memory says nothing about the backend: the fallback serves this call, the next one tries
        # again (marked broken, a shape would stay on the fallback for the rest of the process)
        transient = isinstance(e, _OUT_OF_MEMORY)
        if not transient:
            self._broken.add((name, call.key))
        self._failures[(name, what)] += 1
        d.calls -= 1  # the fallback served it, not this backend
        if not transient and self._decisions.get(dkey) is d:  # another thread may have retired it already
            self._retired.append(self._decisions.pop(dkey))
        if (name, what) not in self._logged:
            self._logged.add((name, what))
            log.warning("backend %s failed on %s (%s); using %s for %s", name, call.describe(), what,
                        self.fallback.name, "this call" if transient else "this shape from now on")
        return self.fallback.run(call)

    # -- telemetry ------------------------------------------------------------------------------------------
    def telemetry(self) -> dict:
        """Per backend: calls served, and calls it passed on (declined or failed), with the reasons."""
        out = {}
        for b in self.backends:
            why = b.unavailable_reason()
            out[b.name] = {"available": why is None, "unavailable_reason": why, "disabled": b.name in self.disabled,
                           "served": 0, "declined": Counter(), "failed": Counter()}
        for d in [*self._decisions.values(), *self._retired]:
            out[d.backend.name]["served"] += d.calls
            for name, reason in d.declined:
                out[name]["declined"][reason] += d.calls
        for (name, what), n in self._failures.items():
            out[name]["failed"][what] += n
            out[self.fallback.name]["served"] += n
        for v in out.values():
            v["declined"] = dict(v["declined"])
            v["failed"] = dict(v["failed"])
        return out

    def decisions(self) -> list:
        """One entry per call signature seen: what it was, who served it, how often, who declined and why."""
        return [{"call": d.describe, "backend": d.backend.name, "calls": d.calls, "declined": dict(d.declined)}
                for d in [*self._decisions.values(), *self._retired]]

    def reset(self) -> None:
        """Forget decisions, broken marks and counts (backends keep their availability probes)."""
        self._decisions.clear()
        self._retired.clear()
        self._broken.clear()
        self._failures.clear()
        self._logged.clear()
