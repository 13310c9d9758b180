"""Times one baseline engine on one layout's model and prints one JSON object. Run once per engine, each in its own
process, so that the peak RSS (VmHWM) belongs to that engine alone.

    python bench_py.py ENGINE --model bench/.work/s128 [--threads 2] [--batches 1,8] [--warmup 1] [--runs 5]

ENGINE:
  torch   PyTorch eager (titok_torch.py), torch.set_num_threads(N), torch.inference_mode()
  ort     onnxruntime CPUExecutionProvider on the exported graphs (MODEL/onnx): intra_op_num_threads=N,
          inter_op_num_threads=1, sequential execution, all graph optimisations (the defaults otherwise)
  sgemm   the float32 matmul ceiling: 1024x1024x1024 products with numpy (its BLAS) and torch at N threads

Stages and inputs are those of crates/marvel-core/examples/bench_titok.rs: encode (images -> tokens, z_q), then for
the two-stage layouts decoder (z_q -> logits (B,1024,16,16)) and pixel (logits -> image), for the single layout
decode (z_q -> image); each stage is fed the previous stage's output of the same engine, on random images in
[0, 1]. Both engines' outputs were checked against torch's by prepare.py (and torch against the reference fixtures
by parity_check.py) before anything is timed.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


def status_mib(field: str) -> float:
    """A /proc/self/status memory field (VmHWM: peak RSS; VmRSS: current RSS) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def peak_rss_mib() -> float:
    return status_mib("VmHWM")


def timed(fn, warmup: int, runs: int):
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(max(1, runs)):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def images(batch: int, size: int = 256):
    import numpy as np

    return np.random.default_rng(7 + batch).random((batch, 3, size, size), dtype=np.float32)


def record(results, stage, batch, times):
    med = statistics.median(times)
    results.append(
        {"stage": stage, "batch": batch, "median_s": med, "images_per_s": batch / med, "runs": [round(t, 6) for t in times]}
    )


def bench_torch(args):
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from titok_torch import load_titok

    torch.set_num_threads(args.threads)
    base = status_mib("VmRSS")
    t0 = time.perf_counter()
    model = load_titok(args.model)
    load_s = time.perf_counter() - t0
    loaded = status_mib("VmRSS")
    legacy = model.cfg.is_legacy
    results = []
    with torch.inference_mode():
        for b in args.batches:
            x = torch.from_numpy(images(b))
            t_enc, (z_q, _) = timed(lambda: model.encode(x), args.warmup, args.runs)
            t_dec, out = timed(lambda: model.decoder(z_q), args.warmup, args.runs)
            record(results, "encode", b, t_enc)
            if legacy:
                record(results, "decoder", b, t_dec)
                record(results, "pixel", b, timed(lambda: model.pixel_stage(out), args.warmup, args.runs)[0])
            else:
                record(results, "decode", b, t_dec)
    return {
        "engine": "torch",
        "version": f"torch {torch.__version__} eager ({torch.backends.cpu.get_cpu_capability()})",
        "threads": torch.get_num_threads(),
        "load_s": load_s,
        "base_rss_mib": base,
        "loaded_rss_mib": loaded,
        "results": results,
    }


def bench_ort(args):
    import onnxruntime as ort

    def session(name):
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(str(args.model / "onnx" / f"{name}.onnx"), so, providers=["CPUExecutionProvider"])

    base = status_mib("VmRSS")
    t0 = time.perf_counter()
    legacy = (args.model / "onnx" / "pixel.onnx").is_file()
    enc, dec = session("encode"), session("decoder")
    pix = session("pixel") if legacy else None
    load_s = time.perf_counter() - t0
    loaded = status_mib("VmRSS")
    results = []
    for b in args.batches:
        x = images(b)
        t_enc, (_, z_q) = timed(lambda: enc.run(None, {"images": x}), args.warmup, args.runs)
        t_dec, (out,) = timed(lambda: dec.run(None, {"z_q": z_q}), args.warmup, args.runs)
        record(results, "encode", b, t_enc)
        if legacy:
            record(results, "decoder", b, t_dec)
            record(results, "pixel", b, timed(lambda: pix.run(None, {"logits": out}), args.warmup, args.runs)[0])
        else:
            record(results, "decode", b, t_dec)
    return {
        "engine": "onnxruntime",
        "version": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        "threads": args.threads,
        "load_s": load_s,
        "base_rss_mib": base,
        "loaded_rss_mib": loaded,
        "results": results,
    }


def bench_sgemm(args):
    n = 1024
    flop = 2.0 * n**3
    out = {"engine": "sgemm", "threads": args.threads, "n": n}
    # numpy's BLAS reads its thread count from the environment at import: the runner sets OPENBLAS_NUM_THREADS.
    import numpy as np

    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = np.random.default_rng(1).random((n, n), dtype=np.float32)
    t, _ = timed(lambda: a @ b, 3, 20)
    out["numpy_gflops"] = flop / statistics.median(t) / 1e9
    out["numpy_version"] = np.__version__
    try:
        from threadpoolctl import threadpool_info

        out["numpy_blas"] = [
            {k: i.get(k) for k in ("internal_api", "version", "architecture", "num_threads")} for i in threadpool_info()
        ]
    except ImportError:
        pass
    out["openblas_env"] = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS")}
    import torch

    torch.set_num_threads(args.threads)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    t, _ = timed(lambda: ta @ tb, 3, 20)
    out["torch_gflops"] = flop / statistics.median(t) / 1e9
    out["torch_blas"] = "mkl" if torch.backends.mkl.is_available() else "other"
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("engine", choices=["torch", "ort", "sgemm"])
    ap.add_argument("--model", type=Path, help="a layout's folder written by prepare.py (torch, ort)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    if args.engine != "sgemm" and args.model is None:
        ap.error(f"{args.engine} needs --model")
    out = {"torch": bench_torch, "ort": bench_ort, "sgemm": bench_sgemm}[args.engine](args)
    out["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
