"""Tile sizes and launch options for the Triton flash-attention kernel, per device family.

A configuration is (BLOCK_M query rows, BLOCK_N keys per step, warps, pipeline stages[, XPU GRF mode][, output
column windows per query tile]).
`choose()` takes a measured entry from TUNED when the problem class has one, else the family's TABLES entry,
shrunk in the query direction and finally split over the keys when batch x heads x query tiles would leave the
device idle (the original B580 kernel's "atomic" idea: many small programs instead of few large ones).
`measured_losses()` is the documented rule by which the backend leaves calls to SDPA where it measured slower.

Where the numbers come from:
- CUDA sm90 (H100/H200): measured on an H200 with torch 2.11 / Triton 3.6 (bench/NOTES_triton.md,
  bench/RESULTS.md). TUNED holds the SD shapes' winners of the tile sweep; TABLES the fallback for others.
- CUDA other (Ampere/Ada/Blackwell): not measured; a conservative table.
- XPU (Arc B580 / Xe2, Xe-HPG, Max): NOT measured (no Intel GPU was available). Starting points from the
  shapes Intel's Triton backend favours for attention (BLOCK_M 128, 8-16 warps, 256-register GRF mode, 2-D
  block loads through tensor descriptors). Set ARCATTN_TRITON_AUTOTUNE=1 to time the candidates on the device
  at first use of each shape instead.
- Interpreter (CPU, TRITON_INTERPRET=1): small tiles, so that tests cover several tiles and partial tiles.

Environment overrides (experiments): ARCATTN_TRITON_CONFIG="BM,BN,WARPS,STAGES[,SPLITS]" forces one configuration
for every call; ARCATTN_TRITON_IRREGULAR_TAIL=0/1 forces the head-tail policy.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace
from typing import Optional

import torch


@dataclass(frozen=True)
class TileConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    grf_mode: Optional[str] = None  # XPU only: "256" asks IGC for 256 registers per thread
    value_parts: int = 1  # programs per query tile, each writing one window of the output's columns
    q_tiles: int = 0  # > 0: the short-keys kernel (kernels/short_keys.py), this many query tiles per program
    max_registers: Optional[int] = None  # CUDA: a cap on registers per thread (ptxas .maxnreg), for occupancy

    def options(self) -> dict:
        """Keyword arguments for the Triton launch."""
        opts = {"num_warps": self.num_warps, "num_stages": self.num_stages}
        if self.grf_mode is not None:
            opts["grf_mode"] = self.grf_mode
        if self.max_registers is not None:
            opts["maxnreg"] = self.max_registers
        return opts

    def short(self) -> str:
        return (f"{self.block_m}x{self.block_n} w{self.num_warps} s{self.num_stages}"
                + (f" grf{self.grf_mode}" if self.grf_mode else "")
                + (f" v/{self.value_parts}" if self.value_parts > 1 else "")
                + (f" short q/{self.q_tiles}" if self.q_tiles else "")
                + (f" r{self.max_registers}" if self.max_registers else ""))


@dataclass(frozen=True)
class DeviceInfo:
    family: str          # "sm90", "cuda", "xpu", "interpreter"
    units: int           # programs that run at once, roughly: SMs on CUDA, Xe-cores on XPU
    use_descriptors: bool  # load tiles through tensor descriptors (XPU 2-D block loads)


# (max padded head dim, config) per family, first match wins. The padded head dim is D0 + D1 of the kernel's
# head split (40 -> 48, 72 -> 80, 80 -> 80, 160 -> 160, 64 -> 64; 64 / 128 for unaligned 40 / 72 on CUDA).
TABLES = {
    "sm90": (
        (64, TileConfig(64, 64, 4, 3)),
        (128, TileConfig(64, 64, 4, 3)),
        (256, TileConfig(64, 64, 4, 2)),
    ),
    "cuda": (
        (64, TileConfig(128, 64, 4, 2)),
        (128, TileConfig(128, 64, 8, 2)),
        (256, TileConfig(64, 32, 4, 2)),
    ),
    "xpu": (
        (64, TileConfig(128, 64, 8, 2, "256")),
        (128, TileConfig(128, 64, 16, 2, "256")),
        (256, TileConfig(64, 32, 16, 2, "256")),
    ),
    "interpreter": (
        (256, TileConfig(32, 16, 4, 1)),
    ),
}

# Measured winners per problem class, consulted before the heuristic: {family: {(head dim, Sq bucket, Sk bucket,
# smallest batch x heads): (TileConfig, splits, head split or None)}}, a head split being (D0, D1) or, with v's
# own, (D0, D1, E0, E1) (flash.Plan); the entry with the largest batch x heads
# threshold not above the call's is taken. Buckets are powers of two rounded up, so 77 keys -> 128.
# sm90: kernel-only medians (CUDA graphs) on an H200, torch 2.11 / Triton 3.6, fp16: bench/gpu_triton.py's tile
# sweep at B = 1 (bench/NOTES_triton.md) and bench/gpu_variants.py at B = 1 and 2 (bench/results/variants_*;
# visit 19 swept every SD shape at B = 2: where no B = 2 entry exists, the B = 1 winner also won there).
# The D = 160 entries with output windows (value_parts) were measured on an H100 (visits 33, 36), same software.
TUNED: dict = {
    "sm90": {
        (40, 4096, 4096, 1): (TileConfig(128, 64, 8, 3), 1, None),     # sd15-512 in1 self     92.0 us
        (40, 16384, 16384, 1): (TileConfig(128, 64, 8, 3), 1, None),   # sd15-1024 in1 self  1339 us
        (64, 4096, 4096, 1): (TileConfig(64, 64, 4, 3), 1, None),      # sdxl-1024 in2 self    107 us
        (64, 4096, 4096, 16): (TileConfig(128, 64, 8, 3), 1, None),    # ... at B = 2          221 us (64x64: 234)
        (64, 1024, 1024, 1): (TileConfig(64, 64, 4, 3), 1, None),      # sdxl-1024 in3 self     18.7 us
        (80, 1024, 1024, 1): (TileConfig(64, 128, 4, 3), 1, (64, 16, 128, 0)),   # sd15-512 in2 self  13.8 us
        (80, 1024, 1024, 16): (TileConfig(128, 64, 8, 3), 1, (64, 16, 128, 0)),  # ... at B = 2       19.0 us
        # D = 160 at 256 queries or fewer: 8-32 programs per head set leave most SMs idle; output windows (three
        # of 64 columns, two of 128 at B = 2, five of 32 for 64 queries) multiply them and shrink the accumulator
        # (248 -> 128-184 registers)
        (160, 256, 256, 1): (TileConfig(64, 64, 4, 3, value_parts=3), 1, None),   # sd15-512 in3 self  8.1 -> 6.5 us
        (160, 256, 256, 16): (TileConfig(64, 64, 4, 3, value_parts=2), 1, None),  # ... at B = 2  8.1 -> 7.7 us
        (160, 64, 64, 1): (TileConfig(64, 64, 4, 2, value_parts=5), 1, None),     # sd15-512 mid self  4.4 -> 3.5 us
        (160, 256, 128, 1): (TileConfig(64, 128, 4, 2, value_parts=3), 1, None),  # sd15-512 in3 cross 6.3 -> 4.8 us
        (160, 256, 128, 16): (TileConfig(64, 64, 4, 2, q_tiles=1), 1, None),      # ... at B = 2, short keys 4.5 us
        (160, 64, 128, 1): (TileConfig(64, 64, 4, 2, value_parts=5), 1, None),    # sd15-512 mid cross 7.6 -> 4.4 us
    },
    "cuda": {}, "xpu": {}, "interpreter": {},
}


# The short-keys kernel (kernels/short_keys.py) holds every key of a (batch, head) on chip: at most this many.
SHORT_KEYS_MAX = 192
# Keys up to which `choose` sends a non-causal call to the short-keys kernel when no measured entry says otherwise
# (0: never). sm90, H100, torch 2.11 / Triton 3.6 (bench/results/variants_visit49): on every SD1.5 / SDXL
# cross-attention (77 keys) it beat the flash kernel's measured entries, most where the queries are many:
# sd15 in1 cross 7.1 -> 5.6 us (B = 1), 13.1 -> 8.5 us (B = 2); sdxl in2 cross 10.5 -> 6.3, 14.9 -> 9.3 us; sdxl
# in3 cross 6.1 -> 4.7, 10.0 -> 6.2 us; sd15 in2 cross 4.5 -> 4.0, 5.8 -> 5.1 us. With a long prompt's 154 keys
# (visit 50) likewise: sd15 in1 cross 11.0 -> 7.6 us (B = 1), 18.1 -> 11.6 us (B = 2); sdxl in2 cross 11.5 -> 9.0,
# 19.6 -> 14.5 us; sdxl in3 cross 7.0 -> 6.3, 11.6 -> 8.9 us; sd15 in2 cross 5.6 -> 5.1, 7.2 -> 7.4 us (the one
# tie). Where keys and values do not fit on chip (fp32, wide heads) the backend steps down to the flash kernel.
# Other families: not measured.
SHORT_KEYS = {"sm90": 192, "cuda": 0, "xpu": 0, "interpreter": 192}
# Programs per unit the short-keys kernel's query tiles are dealt to: on the H100, 64-row tiles in about 2.4 x 132
# programs (1-4 tiles each) won on every shape above, fewer or more programs lost 5-40 %.
SHORT_PROGRAMS_PER_UNIT = 2.4


def tuned_entry(family: str, D: int, Sq: int, Sk: int, BH: int) -> Optional[tuple]:
    """The TUNED entry for this problem class with the largest batch x heads threshold <= BH, or None."""
    best, best_bh = None, 0
    for (d, sq, sk, bh), entry in TUNED.get(family, {}).items():
        if (d, sq, sk) == (D, bucket(Sq), bucket(Sk)) and best_bh < bh <= BH:
            best, best_bh = entry, bh
    return best


# v and the output take one padded power-of-two part when q/k's head has a tail (40 -> q/k 32 + 16, v 64):
# on an H200 (Triton 3.6) one wide P @ V product beat two narrow ones at D = 40 (92.0 vs 94.4 us at B = 1, 175 vs
# 186 us at B = 2 on sd15-512 in1 self; 7.3 vs 7.7 us on its cross-attention), bench/results/variants_visit11
# and _visit18. Padding 80 to 128 won on the 1024^2 self-attention (13.8 vs 14.0 us, 19.0 vs 19.8 us) but lost on
# its cross-attention (7.9 vs 5.9 us at B = 2: a 128-wide accumulator next to 128-key tiles crowds the
# registers), so wider pads come only from TUNED entries. Not measured elsewhere: off.
VALUE_PAD_MAX = {"sm90": 64, "cuda": 0, "xpu": 0, "interpreter": 64}


def value_head(info: "DeviceInfo", D: int, head: tuple) -> tuple:
    """(E0, E1), v's and the output's split, given q/k's (D0, D1)."""
    d0, d1 = head
    full = max(16, 1 << (D - 1).bit_length())
    if d1 and full <= VALUE_PAD_MAX[info.family]:
        return full, 0
    return d0, d1


# Candidates timed by the optional on-device autotuner (ARCATTN_TRITON_AUTOTUNE=1), per family.
CANDIDATES = {
    "sm90": tuple(TileConfig(bm, bn, w, s) for bm, bn, w, s in (
        (128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3), (64, 64, 4, 3), (64, 128, 4, 2),
        (128, 32, 4, 3), (64, 32, 4, 2))),
    "cuda": tuple(TileConfig(bm, bn, w, s) for bm, bn, w, s in (
        (128, 64, 4, 2), (128, 64, 8, 2), (64, 64, 4, 2), (128, 32, 4, 2), (64, 32, 4, 2))),
    "xpu": tuple(TileConfig(bm, bn, w, s, "256") for bm, bn, w, s in (
        (128, 64, 8, 2), (128, 64, 16, 2), (128, 32, 8, 2), (256, 32, 32, 2), (128, 64, 16, 3), (64, 64, 8, 2),
        (64, 32, 4, 2))),
    "interpreter": (TileConfig(32, 16, 4, 1), TileConfig(16, 32, 4, 1)),
}

# Query tiles are never shrunk below this (sm90: below 64 rows the kernel leaves the wgmma path).
MIN_BLOCK_M = {"sm90": 32, "cuda": 32, "xpu": 32, "interpreter": 16}
# The grid should hold at least this many programs per unit before we accept it as "filling the device".
# (sm90: measured, small grids of 64-row tiles beat twice as many 32-row tiles down to ~0.2 waves; splitting the
# keys of SD1.5's small-grid shapes (16-128 programs) measured slower on every shape too, bench/results/
# variants_visit25: the merge epilogue costs registers, and these calls are latency-bound, not short of SMs.)
WAVES = {"sm90": 0.2, "cuda": 0.25, "xpu": 2.0, "interpreter": 0.0}
MAX_SPLITS = 16
# Irregular head tails (D0 + D1 > D, e.g. 40 = 32 + an overlapping 16). On an H200 with Triton 3.6 every split
# was right once the loads are 16-byte aligned (the kernel's AL hint), and a head with a tail part miscompiled
# when they were not; unaligned calls therefore get one power-of-two part on CUDA (flash.Plan). XPU: not
# measured, off until it is (ARCATTN_TRITON_IRREGULAR_TAIL=1 turns it on).
IRREGULAR_TAIL = {"sm90": True, "cuda": True, "xpu": False, "interpreter": True}


def irregular_tail(info: "DeviceInfo") -> bool:
    env = os.environ.get("ARCATTN_TRITON_IRREGULAR_TAIL")  # experiments: 1 / 0 overrides the table
    if env in ("0", "1"):
        return env == "1"
    return IRREGULAR_TAIL[info.family]


# Fewest pipeline stages a configuration may step down to. sm90: Triton 3.6 computed wrong results with one
# stage when the head has a tail part (bench/NOTES_triton.md), so never go below two there.
MIN_STAGES = {"sm90": 2, "cuda": 1, "xpu": 1, "interpreter": 1}


@functools.lru_cache(maxsize=None)
def device_info(device_type: str, index: int, interpreted: bool) -> DeviceInfo:
    if interpreted:
        return DeviceInfo("interpreter", 1, False)
    if device_type == "cuda":
        props = torch.cuda.get_device_properties(index)
        family = "sm90" if (props.major, props.minor) == (9, 0) else "cuda"
        return DeviceInfo(family, int(props.multi_processor_count), False)
    if device_type == "xpu":
        props = torch.xpu.get_device_properties(index)
        units = int(getattr(props, "gpu_subslice_count", 0) or 0) or max(1, int(getattr(props, "gpu_eu_count", 160)) // 8)
        return DeviceInfo("xpu", units, has_tensor_descriptors())
    return DeviceInfo("interpreter", 1, False)


def has_tensor_descriptors() -> bool:
    """Whether this Triton has `tl.make_tensor_descriptor` (Triton 3.4 on: torch 2.8's pytorch-triton-xpu). Older
    ones (torch 2.6 / 2.7 on XPU: 3.2 / 3.3) take the kernel's pointer path instead of failing on every shape."""
    try:
        import triton.language as tl
    except Exception:  # noqa: BLE001 - no usable Triton: the backend says why elsewhere
        return False
    return hasattr(tl, "make_tensor_descriptor")


def _forced() -> Optional[tuple]:
    s = os.environ.get("ARCATTN_TRITON_CONFIG")
    if not s:
        return None
    parts = [int(x) for x in s.split(",")]
    cfg = TileConfig(*parts[:4])
    return cfg, (parts[4] if len(parts) > 4 else 1)


def base_config(info: DeviceInfo, head_pad: int) -> TileConfig:
    for max_d, cfg in TABLES[info.family]:
        if head_pad <= max_d:
            return cfg
    return TABLES[info.family][-1][1]


def bucket(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def short_keys_limit(info: DeviceInfo) -> int:
    env = os.environ.get("ARCATTN_TRITON_SHORT_KEYS")  # experiments: 0 turns the rule off, N sets its limit
    if env and env.isdigit():
        return min(int(env), SHORT_KEYS_MAX)
    return SHORT_KEYS[info.family]


def short_config(info: DeviceInfo, *, head_pad: int, BH: int, Sq: int) -> TileConfig:
    """The short-keys kernel's tile: 64 query rows (shorter for short queries) and as many tiles per program as
    deal them to about SHORT_PROGRAMS_PER_UNIT programs per unit."""
    base = base_config(info, head_pad)
    bm = min(base.block_m, 64)
    while bm > MIN_BLOCK_M[info.family] and bm // 2 >= Sq:
        bm //= 2
    tiles = BH * -(-Sq // bm)
    q_tiles = max(1, round(tiles / (info.units * SHORT_PROGRAMS_PER_UNIT)))
    return replace(base, block_m=bm, num_warps=min(base.num_warps, max(4, bm // 16)), value_parts=1,
                   q_tiles=min(q_tiles, -(-Sq // bm)))


def choose(info: DeviceInfo, *, head_pad: int, BH: int, Sq: int, Sk: int, causal: bool, D: int = 0) -> tuple:
    """(TileConfig, key splits, head split or None) for one problem: a measured entry if there is one, else the
    short-keys kernel for a short key sequence, else the table's tile, shrunk or split to fill the device."""
    forced = _forced()
    if forced is not None:
        return forced + (None,)
    want = info.units * WAVES[info.family]
    tuned = tuned_entry(info.family, D, Sq, Sk, BH)
    # a measured entry unless its grid would leave the device idle; entries with output windows or for the
    # short-keys kernel were measured on exactly such grids
    if tuned is not None and not causal and (BH * -(-Sq // tuned[0].block_m) * tuned[1] >= want
                                             or tuned[0].value_parts > 1 or tuned[0].q_tiles > 0):
        return tuned
    if not causal and 1 <= Sk <= short_keys_limit(info):
        return short_config(info, head_pad=head_pad, BH=BH, Sq=Sq), 1, None
    cfg = base_config(info, head_pad)
    bm = cfg.block_m
    # Smaller query tiles first: a tile no taller than the query length, then more programs while short of work.
    while bm > MIN_BLOCK_M[info.family] and (bm // 2 >= Sq or BH * -(-Sq // bm) < want):
        bm //= 2
    if bm != cfg.block_m:
        # a shorter tile holds fewer live registers: keep the warps busy with fewer of them
        cfg = replace(cfg, block_m=bm, num_warps=min(cfg.num_warps, max(4, bm // 16)))
    if Sk <= 2 * cfg.block_n:  # a short key sequence (77 text tokens, 1): one key block that just covers it
        cfg = replace(cfg, block_n=min(128, max(16, 1 << (Sk - 1).bit_length())))
    programs = BH * -(-Sq // bm)
    key_blocks = -(-Sk // cfg.block_n)
    splits = 1
    if programs < want and key_blocks >= 8:
        # split the keys into runs of at least 4 blocks each; the last program of a tile merges the runs
        splits = int(min(MAX_SPLITS, -(-want // programs), key_blocks // 4))
        splits = max(1, splits)
    return cfg, splits, None


def candidates(info: DeviceInfo, head_pad: int) -> tuple:
    """Configurations the autotuner times (those whose tiles fit the head dim sensibly)."""
    out = []
    for c in CANDIDATES[info.family]:
        if head_pad > 128 and c.block_m * c.block_n > 128 * 64:
            continue
        out.append(c)
    return tuple(out)


# Where this kernel measured slower than torch's best SDPA kernel (cuDNN), per device family; the router then
# leaves those calls to SDPA. sm90, H200, torch 2.11 / Triton 3.6 (bench/RESULTS.md): in the compute-bound regime
# (Sq * Sk >= 4096^2) cuDNN wins for head dims that are not a multiple of 64 (D = 40: 0.85-0.89x host-style,
# 0.87-0.94x kernel only) and for D = 64 once batch x heads >= 16 (SDXL B = 2: 0.91x host-style, 0.91-0.97x
# kernel only); every smaller SD shape measured 1.03-1.6x for Triton.
LARGE_SCORES = 4096 * 4096


def measured_losses(info: DeviceInfo, call) -> list:
    """Reasons to leave a call to SDPA where measurements showed this kernel slower on that device family
    (a documented rule until the measured per-shape policy decides; bench/NOTES_triton.md)."""
    if info.family != "sm90" or call.Sq * call.Sk < LARGE_SCORES or call.causal:
        return []
    if call.D % 64:
        return [f"measured slower than cuDNN SDPA on Hopper for Sq*Sk >= 4096^2 with head dim {call.D}"
                " (not a multiple of 64)"]
    if call.B * call.H >= 16:
        return [f"measured slower than cuDNN SDPA on Hopper for Sq*Sk >= 4096^2 with batch x heads"
                f" {call.B * call.H} >= 16"]
    return []
