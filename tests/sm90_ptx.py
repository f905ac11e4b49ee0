"""Compile the flash kernel for sm_90 on a machine without a GPU (Triton's bundled ptxas) and report, as JSON,
where its programmatic-dependent-launch wait sits relative to its global memory accesses in the PTX.

Run in its own process: the tests set TRITON_INTERPRET=1, under which the kernel is not compilable.

    python tests/sm90_ptx.py '[{"D": 40, "PDL": true, "SPLITS": 1}, {"D": 40, "PDL": false}]'
"""
from __future__ import annotations

import inspect
import json
import os
import re
import sys

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GLOBAL_ACCESS = re.compile(r"\b(ld\.global|st\.global|atom\.global|red\.global|cp\.async|cp\.reduce\.async)")


def main(spec: dict) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from arcattn.kernels import flash

    D = spec.get("D", 40)
    d0, d1 = flash.head_split(D)
    consts = dict(D=D, D0=d0, D1=d1, C1=D - d1 if d1 and d0 + d1 > D else d0, E0=d0, E1=d1,
                  F1=D - d1 if d1 and d0 + d1 > D else d0, BLOCK_M=128, BLOCK_N=64, CAUSAL=False,
                  WRITE_LSE=False, SPLITS=spec.get("SPLITS", 1), SCALE_FIRST=False, IEEE=False, UPCAST=False,
                  USE_DESC=False, AL=8, VPARTS=1, PDL=bool(spec.get("PDL", True)))
    names = list(inspect.signature(flash._attn_fwd.fn).parameters)
    assert set(flash._CONSTS) <= set(names) and set(consts) == set(flash._CONSTS), "constexpr list out of date"
    pointers = {"Q": "*fp16", "K": "*fp16", "V": "*fp16", "O": "*fp16", "LSE": "*fp32", "WS": "*fp32",
                "WSL": "*fp32", "LOCKS": "*i32"}
    sig = {n: "constexpr" if n in consts else pointers.get(n, "fp32" if n == "qk_scale" else "i32") for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n in pointers}
    ck = triton.compile(ASTSource(flash._attn_fwd, sig, consts, attrs), target=GPUTarget("cuda", 90, 128),
                        options=dict(num_warps=8, num_stages=3, launch_pdl=consts["PDL"]))
    lines = ck.asm["ptx"].splitlines()
    waits = [i for i, line in enumerate(lines) if "griddepcontrol.wait" in line]
    accesses = [i for i, line in enumerate(lines) if GLOBAL_ACCESS.search(line)]
    return {"launch_pdl": bool(ck.metadata.launch_pdl), "waits": waits,
            "first_access": accesses[0] if accesses else None, "accesses": len(accesses)}


if __name__ == "__main__":
    specs = json.loads(sys.argv[1] if len(sys.argv) > 1 else "[{}]")
    print(json.dumps([main(s) for s in specs]))
