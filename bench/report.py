"""Turn `convkern bench --peers --json` records into the Markdown tables of docs/benchmarks.md.

    python bench/report.py bench/results/reference-cpu-float32.json
"""
import json
import math
import sys
from collections import defaultdict


def main(path):
    records = json.load(open(path))
    peer = {(r["layer"], r["pass"]): r for r in records if r["algorithm"] == "torch"}
    algs = [a for a in dict.fromkeys(r["algorithm"] for r in records) if a != "torch"]
    print("| layer | pass | " + " | ".join(algs) + " | torch | auto ÷ torch |")
    print("|---|---|" + "---:|" * (len(algs) + 2))
    by_key = defaultdict(dict)
    for r in records:
        by_key[(r["layer"], r["pass"])][r["algorithm"]] = r
    ratios = defaultdict(list)
    for (layer, pass_), row in by_key.items():
        cells = [f"{row[a]['gflops']:.1f}" if a in row else "-" for a in algs]
        ratio = row["auto"].get("ratio_vs_torch", row["auto"].get("ratio_vs_peer")) if "auto" in row else None
        if ratio:
            ratios[layer].append(ratio)
        torch = f"{peer[(layer, pass_)]['gflops']:.1f}" if (layer, pass_) in peer else "-"
        print(f"| {layer} | {pass_} | " + " | ".join(cells) + f" | {torch} | "
              + ("-" if ratio is None else f"{ratio:.2f}") + " |")
    if ratios:
        # forward+backward throughput ratio per layer: total torch time / total convkern time
        print("\n| layer | fwd+bwd time ratio (torch ÷ auto) |\n|---|---:|")
        layer_ratios = []
        for layer in ratios:
            mine = sum(by_key[(layer, p)]["auto"]["median_ms"] for p in ("fwd", "bwd_data", "bwd_filter"))
            theirs = sum(peer[(layer, p)]["median_ms"] for p in ("fwd", "bwd_data", "bwd_filter"))
            layer_ratios.append(theirs / mine)
            print(f"| {layer} | {theirs / mine:.2f} |")
        geo = math.exp(sum(math.log(x) for x in layer_ratios) / len(layer_ratios))
        print(f"\nGeometric mean over {len(layer_ratios)} layers: **{geo:.2f}×** PyTorch CPU's "
              f"forward+backward throughput; lowest layer {min(layer_ratios):.2f}×.")


if __name__ == "__main__":
    main(sys.argv[1])
