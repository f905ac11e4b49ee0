"""Speedup of the Triton backend over torch's default SDPA, per shape, from a `python -m arcattn bench --json`
file (or bench/gpu_triton.py's results): a PNG, and with --tables the per-shape Markdown tables of
bench/RESULTS.md.

    python bench/plot_speedup.py [bench/results/triton_h200.json] [-o bench/speedup_triton.png] [--tables]

Needs matplotlib for the PNG (not a dependency of arcattn; `pip install matplotlib`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TORCH = ("torch", "torch:cudnn", "torch:flash", "torch:efficient", "torch:math")


def load(path: str) -> tuple:
    d = json.load(open(path))
    groups: dict = {}
    for r in d["rows"]:
        groups.setdefault((r["shape"], r["H"], r["D"], r["Sq"], r["Sk"]), {}).setdefault(
            (r["B"], r["dtype"]), {})[r["method"]] = r
    return d, groups


def us(g: dict, m: str):
    r = g.get(m)
    return r["us"] if r and r.get("us") else None


def tables(d: dict, groups: dict) -> str:
    out = []
    for (name, H, D, Sq, Sk), cases in groups.items():
        out.append(f"### {name} (H={H}, D={D}, Sq={Sq}, Sk={Sk})\n")
        out.append("| B | dtype | triton us | torch default us | cuDNN us | flash us | efficient us | math us |"
                   " triton vs default | triton vs cuDNN | router (priority) vs default | router (auto) vs default |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for (B, dt), g in cases.items():
            t, base, cud = us(g, "triton"), us(g, "torch"), us(g, "torch:cudnn")

            def f(x):
                return f"{x:.1f}" if x else "-"

            def ratio(a, b):
                return f"{a / b:.2f}x" if (a and b) else "-"
            out.append(f"| {B} | {dt} | {f(t)} | {f(base)} | {f(cud)} | {f(us(g, 'torch:flash'))} |"
                       f" {f(us(g, 'torch:efficient'))} | {f(us(g, 'torch:math'))} | {ratio(base, t)} |"
                       f" {ratio(cud, t)} | {ratio(base, us(g, 'priority'))} | {ratio(base, us(g, 'auto'))} |")
        out.append("")
    return "\n".join(out)


def plot(d: dict, groups: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k[0] for k in groups]
    variants = sorted({bd for cases in groups.values() for bd in cases})
    fig, axes = plt.subplots(2, 1, figsize=(13, 8.5), sharex=True)
    width = 0.8 / max(1, len(variants))
    for ax, (num, label) in zip(axes, (("torch", "torch default SDPA"), ("torch:cudnn", "torch SDPA, cuDNN forced"))):
        for j, (B, dt) in enumerate(variants):
            ys = []
            for cases in groups.values():
                g = cases.get((B, dt), {})
                t, b = us(g, "triton"), us(g, num)
                ys.append(b / t if (t and b) else 0.0)
            xs = [i + (j - (len(variants) - 1) / 2) * width for i in range(len(names))]
            short = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}.get(dt, dt)
            ax.bar(xs, ys, width, label=f"B={B} {short}")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_ylabel(f"speedup over\n{label}")
        ax.grid(axis="y", alpha=0.3)
    axes[0].axhline(1.2, color="tab:green", linewidth=0.8, linestyle="--")
    axes[1].axhline(0.8, color="tab:red", linewidth=0.8, linestyle="--")
    axes[0].legend(ncol=4, fontsize=8)
    axes[1].set_xticks(range(len(names)))
    axes[1].set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    fig.suptitle(f"arcattn Triton flash attention, host-style (B, S, H*D) calls\n{d.get('describe', '')}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="?", default=str(HERE / "results" / "triton_h200.json"))
    p.add_argument("-o", "--output", default=str(HERE / "speedup_triton.png"))
    p.add_argument("--tables", action="store_true", help="print the per-shape Markdown tables")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    d, groups = load(args.results)
    if args.tables:
        print(tables(d, groups))
    if not args.no_plot:
        plot(d, groups, args.output)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
