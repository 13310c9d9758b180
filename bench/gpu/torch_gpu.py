"""PyTorch twin of bench_gpu's timings, on the same GPU: the `single`-layout TiTok of bench/python/train_torch.py
(S-128 and L-32, LFQ 12 bits x 4 depths, random weights), encode and decode images/s at batch 64 in f32 and with
bf16 weights (as marvel's bf16 run: the model cast to bf16, no autocast), and S-128 training steps/s at batch 32
(forward, backward, clipping, AdamW, EMA; no entropy term on either side).

    python3 bench/gpu/torch_gpu.py [--quick] [--json OUT.json] [--device cpu --tiny]   # the last two: a smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from step_timing import ema_decay  # noqa: E402
from train_torch import NO_DECAY, Model, bench_config, lfq  # noqa: E402


def config(size: str, tokens: int) -> dict:
    cfg = bench_config(tokens)
    vq = cfg["model"]["vq_model"]
    vq.update({"vit_enc_model_size": size, "vit_dec_model_size": size, "num_depths": 4})
    return cfg


DEVICE = "cuda"
BATCH, TRAIN_BATCH = 64, 32


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def median_s(fn, warmup: int, runs: int) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def codec(name: str, size: str, tokens: int, dtype: torch.dtype, runs: int) -> list[dict]:
    torch.manual_seed(0)
    model = Model(config(size, tokens)).to(DEVICE).to(dtype).eval()
    x = torch.randint(0, 256, (BATCH, 3, 256, 256), device=DEVICE).to(dtype) / 255.0
    out = []
    with torch.no_grad():
        def encode():
            return lfq(model.encoder(x, model.latent_tokens), model.depths, model.commitment_cost)[0]

        z_q = encode()
        enc = median_s(encode, 2, runs)
        # The LFQ codes in f32 (as marvel's quantizer does); the decoder takes them in its own dtype, as marvel's.
        dec = median_s(lambda: model.decoder(z_q.to(dtype)), 2, runs)
    note = f"batch {BATCH}, {str(dtype).removeprefix('torch.')} weights"
    out.append({"name": f"{name} encode", "value": BATCH / enc, "unit": "img/s", "note": note})
    out.append({"name": f"{name} decode", "value": BATCH / dec, "unit": "img/s", "note": note})
    return out


def training(runs: int) -> dict:
    cfg = config("small", 128)
    torch.manual_seed(0)
    model = Model(cfg).to(DEVICE)
    named = list(model.named_parameters())
    decay = [p for n, p in named if p.ndim >= 2 and not any(s in n for s in NO_DECAY)]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and not any(s in n for s in NO_DECAY))]
    o = cfg["optimizer"]["params"]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=o["learning_rate"], betas=(o["beta1"], o["beta2"]), eps=1e-8)
    params = [p for _, p in named]
    shadow = [p.detach().clone() for p in params]
    images = torch.randint(0, 256, (TRAIN_BATCH, 256, 256, 3), dtype=torch.uint8, device=DEVICE)
    i = [0]

    def step():
        x = images.permute(0, 3, 1, 2).float() / 255.0
        opt.zero_grad(set_to_none=True)
        loss = model.loss(x, cfg["losses"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg["training"]["max_grad_norm"])
        opt.step()
        i[0] += 1
        with torch.no_grad():
            torch._foreach_lerp_(shadow, [p.detach() for p in params], 1.0 - ema_decay(i[0]))
        return loss.item()

    s = median_s(step, 2, runs)
    return {"name": "S-128 single training step", "value": 1 / s, "unit": "st/s", "note": f"batch {TRAIN_BATCH}, f32, AdamW + EMA + clip"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="batches of 2, one run: a smoke test of this script")
    a = ap.parse_args()
    global DEVICE, BATCH, TRAIN_BATCH
    DEVICE = a.device
    if a.tiny:
        BATCH, TRAIN_BATCH = 2, 2
    runs = 1 if a.tiny else 3 if a.quick else 10
    # TF32 off, as marvel's f32 matmuls (cuBLAS in full f32).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    models = [("S-128", "small", 128)] + ([] if a.quick else [("L-32", "large", 32)])
    timings = []
    for name, size, tokens in models:
        for dtype in (torch.float32, torch.bfloat16):
            timings += codec(name, size, tokens, dtype, runs)
    timings.append(training(runs))
    for t in timings:
        print(f"[torch] {t['name']}: {t['value']:.3f} {t['unit']} {t['note']}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"engine": "torch", "version": torch.__version__, "timings": timings}, indent=1))


if __name__ == "__main__":
    main()
