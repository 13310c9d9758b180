"""The stage-2 step's components one by one, in CPU seconds: the PyTorch twin of marvel's `bench_stage2_parts`
example, built from train_stage2_torch.py's networks and weights, timed the same way.

- `decode`: the frozen encoder + quantizer (no_grad), then the decoder ViT and pixel decoder forward and backward
  into the trainable parameters (from `sum(recon * r)`, a fixed random r);
- `perceptual`: the perceptual loss forward and backward into the reconstruction;
- `gan_generator`: the frozen discriminator's D(recon) and its hinge backward into the reconstruction;
- `discriminator_step`: D(x), D(recon) and the hinge backward into the discriminator's weights.

    stage2_parts_torch.py CONFIG_JSON [--threads 1] [--batch 2] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from train_stage2_torch import load_networks, perceptual_loss


def median_cpu(runs: int, f) -> tuple[float, float]:
    """Median (CPU, wall) seconds of `runs` calls after one warm-up call."""
    f()
    cpu, wall = [], []
    for _ in range(runs):
        c, t = time.process_time(), time.perf_counter()
        f()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return round(statistics.median(cpu), 4), round(statistics.median(wall), 4)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    cfg = json.load(open(a.config))
    torch.set_num_threads(a.threads)
    model, convnext, disc = load_networks(cfg)
    size = cfg["dataset"]["preprocessing"]["crop_size"]
    g = torch.Generator().manual_seed(0)
    x, r = (torch.rand(a.batch, 3, size, size, generator=g) for _ in range(2))
    recon = torch.rand(a.batch, 3, size, size, generator=g).requires_grad_(True)

    def decode():
        with torch.no_grad():
            z_q, _ = model.encode(x)
        (model.decode(z_q) * r).sum().backward()

    def perceptual():
        perceptual_loss(convnext, x, recon).backward()

    def gan_generator():
        for p in disc.parameters():
            p.requires_grad_(False)
        (-disc(recon).mean()).backward()
        for p in disc.parameters():
            p.requires_grad_(True)

    def discriminator_step():
        real, fake = disc(x), disc(recon.detach())
        (0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())).backward()

    parts = {name: median_cpu(a.runs, f) for name, f in
             [("decode", decode), ("perceptual", perceptual), ("gan_generator", gan_generator),
              ("discriminator_step", discriminator_step)]}
    print(json.dumps({"engine": "torch", "threads": torch.get_num_threads(), "batch": a.batch, "runs": a.runs,
                      "cpu_s": {n: v[0] for n, v in parts.items()}, "wall_s": {n: v[1] for n, v in parts.items()}}))


if __name__ == "__main__":
    main()
