"""Prints the benchmark table from the JSON lines the engines wrote (one object per engine).

    python report.py RESULTS.jsonl --model bench/.work/s128 [--markdown OUT.md]

Rows: stage x batch; columns: images/s per engine, the marvel/onnxruntime and marvel/torch ratios (>1: marvel
faster), and the GFLOP/s each engine reaches (analytic multiply-add count of the stage x images/s) as a share of
the sgemm ceiling. Two-stage layouts: "decode" = decoder + pixel, derived from the two stage medians (what a decode
call costs); the single layout times "decode" (z_q -> image) as one stage.
"""

import argparse
import json
from pathlib import Path

ENGINES = ["marvel", "onnxruntime", "torch"]
VIT = {"small": (512, 8), "base": (768, 12), "large": (1024, 24)}


def vit_flops(vq, which, extra_tokens):
    size = vq[f"vit_{which}_model_size"]
    d, layers = (vq[f"vit_{which}_width"], vq[f"vit_{which}_num_layers"]) if size == "custom" else VIT[size]
    grid = 256 // vq[f"vit_{which}_patch_size"]
    seq = grid * grid + 1 + vq["num_latent_tokens"]
    per_layer = 2 * seq * d * (3 * d + d + 8 * d) + 2 * 2 * seq * seq * d  # projections + MLP, QK^T and AV
    return layers * per_layer + extra_tokens(d, grid)


def stage_flops(cfg):
    """Multiply-adds x 2 per image for each stage (convolutions, matmuls; norms and activations ignored)."""
    vq = cfg["model"]["vq_model"]
    n, t = vq["num_latent_tokens"], vq["token_size"]
    pe = vq["vit_enc_patch_size"]
    # VQ searches the codebook; LFQ compares signs (no multiply-adds to speak of).
    search = 2 * n * t * vq["codebook_size"] if vq.get("quantize_mode", "vq") == "vq" else 0
    enc = vit_flops(vq, "enc", lambda d, g: 2 * g * g * 3 * pe * pe * d + 2 * n * d * t) + search
    if not vq.get("is_legacy", True):
        pd_ = vq["vit_dec_patch_size"]
        head = lambda d, g: 2 * n * t * d + 2 * g * g * d * 3 * pd_ * pd_ + 2 * 3 * 3 * 9 * 256 * 256  # noqa: E731
        return {"encode": enc, "decode": vit_flops(vq, "dec", head)}
    dec = vit_flops(vq, "dec", lambda d, g: 2 * n * t * d + 2 * g * g * (d * 2 * d + 2 * d * 1024))
    pd = {"hidden_channels": 128, "channel_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "z_channels": 256, "codebook_size": 1024}
    pd.update(vq.get("pixel_decoder", {}))
    hc, mult, nrb = pd["hidden_channels"], pd["channel_mult"], pd["num_res_blocks"]
    g = 256 // vq["vit_dec_patch_size"]

    def conv(cin, cout, k, res):
        return 2 * cin * cout * k * k * res * res

    res = g
    c = hc * mult[-1]
    pix = 2 * g * g * pd["codebook_size"] * pd["z_channels"] + conv(pd["z_channels"], c, 3, res)
    pix += nrb * 2 * conv(c, c, 3, res)  # mid
    for i in reversed(range(len(mult))):
        cout = hc * mult[i]
        for b in range(nrb):
            cin = c if b == 0 else cout
            pix += conv(cin, cout, 3, res) + conv(cout, cout, 3, res) + (conv(cout, cout, 1, res) if cin != cout else 0)
        c = cout
        if i != 0:
            res *= 2
            pix += conv(c, c, 3, res)
    pix += conv(c, 3, 3, res)
    return {"encode": enc, "decoder": dec, "pixel": pix, "decode": dec + pix}


def median(xs):
    v = sorted(xs)
    return (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2 if v else None


def cpu_rows(runs, batches):
    """The process's CPU seconds per image (median run), marvel through Rust and through Node: unlike the wall
    time, other processes on a shared machine hardly move it, so the two interfaces compare on it."""

    def cpu(engine, stage, batch):
        by = {(x["stage"], x["batch"]): median(x.get("cpu_s") or []) for x in runs.get(engine, {}).get("results", [])}
        if stage == "decode" and ("decoder", batch) in by and ("pixel", batch) in by:
            parts = [by[("decoder", batch)], by[("pixel", batch)]]
            return None if None in parts else sum(parts) / batch
        return by.get((stage, batch)) and by[(stage, batch)] / batch

    rows = []
    for stage in ["encode", "decode"]:
        for b in batches:
            rust, node = cpu("marvel", stage, b), cpu("marvel-node", stage, b)
            if rust and node:
                rows.append(f"| {stage} | {b} | {rust:.4f} | {node:.4f} | {node / rust:.2f} |")
    if not rows:
        return []
    head = "| stage | batch | marvel CPU s/img | marvel via Node CPU s/img | Node/Rust |"
    return ["", "Process CPU seconds per image (median run; all threads):", "", head, "|---" * 5 + "|"] + rows


def merge_rounds(kept, new):
    """One engine's record from two of its rounds (titok.sh ROUNDS > 1): per stage and batch the round with the
    faster median, its runs and CPU times with it; the higher peak RSS; the rest from the first round."""
    if "results" not in kept or "results" not in new:
        return kept if "results" in kept else new
    best = {(x["stage"], x["batch"]): x for x in kept["results"]}
    for x in new["results"]:
        key = (x["stage"], x["batch"])
        if key not in best or x["median_s"] < best[key]["median_s"]:
            best[key] = x
    merged = dict(kept, results=list(best.values()), rounds=kept.get("rounds", 1) + 1)
    peaks = [p for p in (kept.get("peak_rss_mib"), new.get("peak_rss_mib")) if p is not None]
    if peaks:
        merged["peak_rss_mib"] = max(peaks)
    return merged


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()

    runs, meta = {}, {}
    for line in args.results.read_text().splitlines():
        if not line.strip().startswith("{"):
            continue
        r = json.loads(line)
        if r.get("engine") == "meta":
            meta = r
        elif r.get("engine") == "sgemm" and runs.get("sgemm", {}).get("numpy_gflops", 0) > r.get("numpy_gflops", 0):
            runs["sgemm"]["other_numpy_gflops"] = r.get("numpy_gflops")
        elif r.get("engine") == "sgemm" and "sgemm" in runs:
            r["other_numpy_gflops"] = runs["sgemm"].get("numpy_gflops")
            runs["sgemm"] = r
        elif r.get("engine") in runs:
            runs[r["engine"]] = merge_rounds(runs[r["engine"]], r)
        else:
            runs[r["engine"]] = r
    flops = stage_flops(json.loads((args.model / "config.json").read_text()))
    sg = runs.get("sgemm", {})
    # The ceiling is the best float32 matmul any library reached here (MKL usually beats OpenBLAS at this size).
    ceiling = max((sg.get(k) or 0 for k in ("numpy_gflops", "torch_gflops", "other_numpy_gflops")), default=0) or None

    def ips(engine, stage, batch, stat="median"):
        """images/s from the median run (or the fastest run: stat "best")."""
        r = runs.get(engine)
        if not r or "results" not in r:
            return None
        by = {(x["stage"], x["batch"]): (x["median_s"] if stat == "median" else min(x["runs"])) for x in r["results"]}
        if stage == "decode":
            if ("decoder", batch) in by and ("pixel", batch) in by:
                return batch / (by[("decoder", batch)] + by[("pixel", batch)])
            return by.get(("decode", batch)) and batch / by[("decode", batch)]
        return by.get((stage, batch)) and batch / by[(stage, batch)]

    def f(x, fmt="{:.2f}"):
        return fmt.format(x) if x is not None else "-"

    batches = sorted({x["batch"] for r in runs.values() for x in r.get("results", [])})
    lines = []
    if meta:
        lines.append(
            f"{meta.get('date', '')}  {meta.get('cpu', '')}, {meta.get('cores', '?')} cores, threads {meta.get('threads', 2)}; "
            f"load average before/after: {meta.get('load_before', '?')} / {meta.get('load_after', '?')}"
        )
    if ceiling:
        s = runs["sgemm"]
        blas = (s.get("numpy_blas") or [{}])[0]
        lines.append(
            f"sgemm ceiling (1024^3 float32, 2 threads) = {ceiling:.0f} GFLOP/s, the best of: numpy "
            f"{s.get('numpy_gflops', 0):.0f}"
            + (f" and {s['other_numpy_gflops']:.0f}" if s.get("other_numpy_gflops") else "")
            + f" ({blas.get('internal_api', '?')} {blas.get('version', '')} {blas.get('architecture', '')}, "
            f"OPENBLAS_CORETYPE unset), torch/MKL {s.get('torch_gflops', 0):.0f}"
        )
    for e in ENGINES + ["marvel-node"]:
        if e in runs:
            lines.append(f"{e}: {runs[e].get('version', runs[e].get('skipped', ''))}")
    def stage_rows(stat):
        head = (
            "| stage | batch | GFLOP/img | marvel img/s | onnxruntime img/s | torch img/s | marvel/ort | marvel/torch "
            "| % of sgemm ceiling (marvel / ort / torch) | marvel via Node img/s |"
        )
        rows = [head, "|---" * (head.count("|") - 1) + "|"]
        for stage in [s for s in ["encode", "decoder", "pixel", "decode"] if s in flops]:
            for b in batches:
                v = {e: ips(e, stage, b, stat) for e in ENGINES}
                ratio = lambda a, c: f(v[a] / v[c]) if v[a] and v[c] else "-"  # noqa: E731
                pct = " / ".join(
                    f(v[e] * flops[stage] / 1e9 / ceiling * 100, "{:.0f}%") if v[e] and ceiling else "-" for e in ENGINES
                )
                name = "decode (decoder+pixel)" if stage == "decode" and "pixel" in flops else stage
                rows.append(
                    f"| {name} | {b} | {flops[stage] / 1e9:.1f} | {f(v['marvel'])} | {f(v['onnxruntime'])} | {f(v['torch'])} "
                    f"| {ratio('marvel', 'onnxruntime')} | {ratio('marvel', 'torch')} | {pct} "
                    f"| {f(ips('marvel-node', stage, b, stat))} |"
                )
        return rows

    rounds = meta.get("rounds", 1)
    if rounds > 1:
        lines.append(
            f"{rounds} rounds: every engine ran once a round, in alternating order; each row keeps the engine's round "
            "with the faster median (peak RSS: the higher)"
        )
    lines.append("")
    lines.append("Median run:")
    lines.append("")
    lines += stage_rows("median")
    rss = {e: runs[e].get("peak_rss_mib") for e in ENGINES if e in runs}
    base = {e: runs[e].get("base_rss_mib") for e in ENGINES if e in runs}
    loaded = {e: runs[e].get("loaded_rss_mib") for e in ENGINES if e in runs}
    lines.append(
        "| peak RSS (MiB) | all | | "
        + " | ".join(f(rss.get(e), "{:.0f}") for e in ENGINES)
        + f" | {f(rss.get('marvel') / rss['onnxruntime'] if rss.get('marvel') and rss.get('onnxruntime') else None)}"
        + f" | {f(rss.get('marvel') / rss['torch'] if rss.get('marvel') and rss.get('torch') else None)} | "
        + f"| {f(runs.get('marvel-node', {}).get('peak_rss_mib'), '{:.0f}')} |"
    )
    lines.append(
        "| RSS before loading the model (MiB) | | | " + " | ".join(f(base.get(e), "{:.0f}") for e in ENGINES) + " | | | | "
        + f"{f(runs.get('marvel-node', {}).get('base_rss_mib'), '{:.0f}')} |"
    )
    lines.append(
        "| RSS after loading the model (MiB) | | | " + " | ".join(f(loaded.get(e), "{:.0f}") for e in ENGINES) + " | | | | "
        + f"{f(runs.get('marvel-node', {}).get('loaded_rss_mib'), '{:.0f}')} |"
    )
    lines.append("")
    lines.append("Fastest run (less sensitive to other processes on a shared machine):")
    lines.append("")
    lines += stage_rows("best")
    lines += cpu_rows(runs, batches)
    node = runs.get("marvel-node")
    if node and "results" in node:
        lines.append("")
        lines.append(
            "marvel via Node: the TypeScript API (`Tokenizer.encode` of u8 images, `Tokenizer.decode` to u8 images), "
            "so its decode row includes the u8 conversions."
        )
    elif node:
        lines.append(f"\nmarvel via Node: skipped ({node.get('skipped')})")
    checks = []
    for e, how in (("marvel", "Rust"), ("marvel-node", "Node")):
        c = runs.get(e, {}).get("check")
        if c:
            floats = ", ".join(f"{k[:-4]} {v:.1e}" for k, v in c.items() if k.endswith("_err"))
            checks.append(
                f"marvel ({how}) vs torch on the check batch, before timing: tokens identical {c['tokens_identical']} "
                f"({c['tokens_equal']}/{c['tokens']}), {floats} (max abs error / max(1, max abs value))"
            )
    q = meta.get("prepare")
    if q and "ort_image_err" in q:
        floats = ", ".join(f"{k[4:-4]} {v:.1e}" for k, v in q.items() if k.startswith("ort_") and k.endswith("_err"))
        checks.append(
            f"onnxruntime vs torch on the check batch: tokens identical {q['ort_tokens_identical']}, {floats}; the check "
            f"batch's tokens are at least {q['check_margin']:.1e} from a tie"
        )
    p = meta.get("parity")
    for c in (p or {}).get("cases", []):
        floats = ", ".join(f"{k} {v:.1e}" for k, v in c.items() if isinstance(v, float))
        checks.append(f"torch vs the reference fixture {c['fixture']}: tokens identical {c['tokens_identical']}, {floats} max abs")
    if checks:
        lines.append("")
        lines += checks
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
