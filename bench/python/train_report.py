"""Table of bench/train.sh's results: one row per (recipe, batch, threads), each engine's fastest round (by wall
time). CPU s/step is the median CPU time of a step summed over the process's threads: on a shared machine it moves
less with the other processes' load than steps/s does."""

import argparse
import json


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--load-before", required=True)
    ap.add_argument("--load-after", required=True)
    ap.add_argument("--cores", type=int, required=True)
    a = ap.parse_args()
    best: dict = {}
    order = []
    for line in open(a.results):
        r = json.loads(line)
        key = (r["recipe"], r["batch"])
        if key not in best:
            best[key] = {}
            order.append(key)
        prev = best[key].get(r["engine"])
        if r.get("failed"):
            best[key].setdefault(r["engine"], r)
        elif prev is None or prev.get("failed") or r["median_s"] < prev["median_s"]:
            best[key][r["engine"]] = r

    def cell(r, field, fmt):
        if r is None or r.get("failed"):
            return "failed"
        return fmt.format(r[field]) if field in r else "-"

    threads = {r.get("threads") for rows in best.values() for r in rows.values() if not r.get("failed")}
    print("| recipe | batch | threads | marvel steps/s | torch steps/s | marvel/torch | marvel CPU s/step "
          "| torch CPU s/step | marvel peak RSS MiB | torch peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key in order:
        m, t = best[key].get("marvel"), best[key].get("torch")
        ok = m and t and not m.get("failed") and not t.get("failed")
        ratio = f"{m['steps_per_s'] / t['steps_per_s']:.2f}" if ok else "-"
        th = (m if m and not m.get("failed") else t or {}).get("threads", "?")
        print(f"| {key[0]} | {key[1]} | {th} | {cell(m, 'steps_per_s', '{:.4f}')} | {cell(t, 'steps_per_s', '{:.4f}')} "
              f"| {ratio} | {cell(m, 'cpu_s', '{:.2f}')} | {cell(t, 'cpu_s', '{:.2f}')} | {cell(m, 'peak_rss_mib', '{:.0f}')} | {cell(t, 'peak_rss_mib', '{:.0f}')} |")
    for key in order:
        for engine, r in best[key].items():
            if "gradients_s" in r:
                rest = "the discriminator's step, clipping, AdamW, EMA" if key[0].startswith("stage2") else \
                    "clipping, AdamW, EMA"
                alone = (f"; the update alone (clipping, AdamW, EMA) {r['update_s']:.3f} s, {r['update_cpu_s']:.3f} CPU s"
                         if "update_s" in r else "")
                # marvel's stage-2 backward runs the discriminator's forward and backward alongside (Recipe::backward),
                # so its split puts them with the generator's pass and leaves the update and the weights' step.
                along = key[0].startswith("stage2") and engine == "marvel"
                what = "forward + backward (with the discriminator's, run alongside)" if along else "forward + backward"
                if along:
                    rest = "the discriminator's update, clipping, AdamW, EMA"
                print(f"{key[0]} batch {key[1]} {engine}: {what} {r['gradients_s']:.2f} s, the rest of the "
                      f"step ({rest}) about {r['median_s'] - r['gradients_s']:.2f} s{alone}")
    for key in order:
        counts = {e: r["params"] for e, r in best[key].items() if "params" in r}
        if len(set(counts.values())) > 1:
            print(f"warning: {key[0]} batch {key[1]}: the engines train different parameter counts {counts}")
    if len(threads) > 1:
        print(f"warning: the engines ran with different thread counts {sorted(threads)}")
    print(f"\nload average (1/5/15 min) before: {a.load_before}; after: {a.load_after}; {a.cores} cores")
    if max(float(x) for x in (a.load_before + " " + a.load_after).split()[::3]) > 1:
        print("measured on a busy machine (load average above 1): other processes shared the cores")
    print(f"raw results: {a.results}")


if __name__ == "__main__":
    main()
