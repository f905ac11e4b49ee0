"""Plot bench/unet.py's JSON: attention time per UNet step by variant (eager and CUDA-graph), per model and batch.

    python bench/plot_unet.py [bench/results/e2e_visit8/unet.json] [-o bench/unet_attention.png]
(needs matplotlib, which arcattn itself does not)
"""
import argparse
import json
from pathlib import Path

HERE = Path(__file__).parent
VARIANTS = ("stock", "auto", "priority", "triton", "sdpa")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("results", nargs="?", default=str(HERE / "results" / "e2e_visit4" / "unet.json"))
    p.add_argument("-o", "--output", default=str(HERE / "unet_attention.png"))
    args = p.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(Path(args.results).read_text())
    rows = [r for r in data["rows"] if r.get("variant") in VARIANTS and "attention_ms" in r]
    groups = sorted({(r["model"], r["batch"]) for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, title in ((axes[0], "attention_ms", "eager (host launch costs included)"),
                           (axes[1], "attention_graph_ms", "CUDA graph replay (device time only)")):
        width = 0.16
        for i, v in enumerate(VARIANTS):
            ys = [next((r.get(key) or 0 for r in rows if (r["model"], r["batch"]) == g and r["variant"] == v), 0)
                  for g in groups]
            ax.bar([j + (i - 2) * width for j in range(len(groups))], ys, width, label=v)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{m}\nB={b}" for m, b in groups])
        ax.set_ylabel("attention ms per UNet step")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    v = data["versions"]
    fig.suptitle(f"Attention per UNet step = step(variant) - step(no attention); {v['device_name']}, "
                 f"torch {v['torch']}, triton {v['triton']}, fp16", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
