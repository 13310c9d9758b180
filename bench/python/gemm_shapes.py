"""onnxruntime and torch on the TiTok ViTs' batch-1 linear products, as GFLOP/s: the same shapes, layer counts and
median-of-rounds as marvel's `sgemm::bench` (crates/marvel-core/src/nn/kernels/sgemm/bench.rs), so the three read
side by side.

    bench/.venv/bin/python bench/python/gemm_shapes.py [--rounds 7]

onnxruntime gets one graph per ViT with every layer's weights as initializers (MatMul against Wᵀ, which MLAS packs
once at load, as in the exported models); torch runs F.linear on the (n, k) weights, as nn.Linear does. As there,
GFLOP/s of wall time and GFLOP per CPU-second of the process (all threads).
"""

import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

VITS = [("S-128", 385, 512, 6), ("L-32", 289, 1024, 2), ("single", 289, 256, 24)]
PRODUCTS = lambda d: [("qkv", 3 * d, d), ("proj", d, d), ("fc", 4 * d, d), ("c_proj", d, 4 * d)]


def ort_sessions(rows, d, layers, weights, threads):
    """One session per product kind: input x (rows, k), outputs y_l = x · W_lᵀ for every layer."""
    sessions = []
    for p, (name, n, k) in enumerate(PRODUCTS(d)):
        inits = [numpy_helper.from_array(np.ascontiguousarray(weights[l][p].T), f"w{l}") for l in range(layers)]
        nodes = [helper.make_node("MatMul", ["x", f"w{l}"], [f"y{l}"]) for l in range(layers)]
        outs = [helper.make_tensor_value_info(f"y{l}", TensorProto.FLOAT, [rows, n]) for l in range(layers)]
        graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])], outs, inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sessions.append(ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]))
    return sessions


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    print("load average", open("/proc/loadavg").read().strip())
    for vit, rows, d, layers in VITS:
        rng = np.random.default_rng(0)
        weights = [[rng.standard_normal((n, k), dtype=np.float32) * 0.02 for _, n, k in PRODUCTS(d)] for _ in range(layers)]
        tw = [[torch.from_numpy(w) for w in layer] for layer in weights]
        for threads in (1, 2):
            torch.set_num_threads(threads)
            sessions = ort_sessions(rows, d, layers, weights, threads)
            xs = [rng.standard_normal((rows, k), dtype=np.float32) for _, _, k in PRODUCTS(d)]
            txs = [torch.from_numpy(x) for x in xs]
            secs = {"ort": [], "torch": []}
            cpus = {"ort": [], "torch": []}
            # One engine at a time: each one's pool threads spin for a while after a call, and on 2 cores that
            # would take the other's CPUs if the two alternated.
            for who in ("ort", "torch"):
                for _ in range(args.rounds + 1):
                    wall, cpu = [], []
                    for p in range(4):
                        t, c = time.perf_counter(), time.process_time()
                        if who == "ort":
                            sessions[p].run(None, {"x": xs[p]})
                        else:
                            with torch.inference_mode():
                                for l in range(layers):
                                    torch.nn.functional.linear(txs[p], tw[l][p])
                        wall.append(time.perf_counter() - t)
                        cpu.append(time.process_time() - c)
                    secs[who].append(wall)
                    cpus[who].append(cpu)
            for who, s in secs.items():
                s = np.array(s[1:])
                flops = [2.0 * rows * n * k * layers for _, n, k in PRODUCTS(d)]
                line = f"{vit:>6} {threads}t {who:>8}"
                for p, (name, _, _) in enumerate(PRODUCTS(d)):
                    line += f" {name} {flops[p] / np.median(s[:, p]) / 1e9:5.1f}"
                line += f" | all {sum(flops) / np.median(s.sum(axis=1)) / 1e9:5.1f} GFLOP/s"
                c = np.array(cpus[who][1:])
                line += f" | {sum(flops) / np.median(c.sum(axis=1)) / 1e9:5.1f} GFLOP/CPU-s"
                print(line, flush=True)


if __name__ == "__main__":
    main()
