"""PyTorch eager twin of marvel's `single`-recipe training step, for bench/train.sh.

The same architecture as marvel's non-legacy TiTok (the ViT blocks of titok_torch.py; encoder without the legacy
reshape; decoder with the pixel head: 1x1 conv width -> 3*p*p, depth-to-space, 3x3 conv_out), multi-depth LFQ with
the straight-through estimator and MDQ's commitment loss (entropy weight 0 on both sides, so no entropy term), MSE
reconstruction, AdamW with the reference's betas/eps/weight decay and its no-decay group, global-norm clipping to
1.0 and an EMA of the weights: every piece of marvel's `Trainer.step` for this config.

    train_torch.py --print-config [--tokens 128]          # the config both sides train (JSON on stdout)
    train_torch.py CONFIG_JSON --threads 2 --batch 2 --warmup 2 --runs 5 [--split]

Prints one JSON line: median seconds per step, steps/s, median CPU seconds per step (all threads), the losses, and the peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch import nn

from step_timing import ema_decay, time_training
from titok_torch import VIT_SIZES, Block

# Parameter-name substrings the reference's AdamW groups keep out of weight decay (marvel's optim.rs, the same list).
NO_DECAY = ("ln", "bias", "latent_tokens", "mask_token", "embedding", "norm", "gamma", "embed")


def bench_config(tokens: int) -> dict:
    lr = 1e-4
    return {
        "model": {
            "vq_model": {
                "quantize_mode": "lfq", "token_size": 12, "num_depths": 2, "num_latent_tokens": tokens,
                "commitment_cost": 0.25, "entropy_loss_weight": 0.0, "depth_dropout": 0.0,
                "vit_enc_model_size": "small", "vit_dec_model_size": "small",
                "vit_enc_patch_size": 16, "vit_dec_patch_size": 16, "is_legacy": False, "finetune_decoder": False,
            }
        },
        "dataset": {"preprocessing": {"crop_size": 256}},
        "losses": {"quantizer_weight": 1.0, "reconstruction_loss": "l2", "reconstruction_weight": 1.0},
        "optimizer": {"name": "adamw", "params": {"learning_rate": lr, "beta1": 0.9, "beta2": 0.99, "weight_decay": 1e-4}},
        "lr_scheduler": {"scheduler": "cosine", "params": {"learning_rate": lr, "warmup_steps": 5, "end_lr": lr / 10}},
        "training": {"gradient_accumulation_steps": 1, "use_ema": True, "max_train_steps": 1000, "max_grad_norm": 1.0},
    }


class Encoder(nn.Module):
    def __init__(self, d: int, layers: int, heads: int, p: int, size: int, n: int, token_size: int):
        super().__init__()
        self.g, self.n, self.d, self.token_size = size // p, n, d, token_size
        self.patch_embed = nn.Conv2d(3, d, kernel_size=p, stride=p)
        self.class_embedding = nn.Parameter(torch.randn(1, d) * d**-0.5)
        self.positional_embedding = nn.Parameter(torch.randn(self.g**2 + 1, d) * d**-0.5)
        self.latent_token_positional_embedding = nn.Parameter(torch.randn(n, d) * d**-0.5)
        self.ln_pre = nn.LayerNorm(d)
        self.transformer = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_post = nn.LayerNorm(d)
        self.conv_out = nn.Conv2d(d, token_size, kernel_size=1)

    def forward(self, x, latent_tokens):
        b = x.shape[0]
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(b, 1, self.d), patches], 1) + self.positional_embedding
        lat = (latent_tokens + self.latent_token_positional_embedding).expand(b, self.n, self.d)
        x = self.ln_pre(torch.cat([x, lat], 1))
        for blk in self.transformer:
            x = blk(x)
        lat = self.ln_post(x[:, 1 + self.g**2 :])  # (B, N, D): non-legacy, no reshape quirk
        # conv_out is a 1x1 conv: the per-token linear map, as marvel computes it.
        return F.linear(lat, self.conv_out.weight.flatten(1), self.conv_out.bias)  # (B, N, token_size)


class Decoder(nn.Module):
    def __init__(self, d: int, layers: int, heads: int, p: int, size: int, n: int, token_size: int):
        super().__init__()
        self.g, self.p, self.n, self.d = size // p, p, n, d
        self.decoder_embed = nn.Linear(token_size, d)
        self.class_embedding = nn.Parameter(torch.randn(1, d) * d**-0.5)
        self.positional_embedding = nn.Parameter(torch.randn(self.g**2 + 1, d) * d**-0.5)
        self.mask_token = nn.Parameter(torch.randn(1, 1, d) * d**-0.5)
        self.latent_token_positional_embedding = nn.Parameter(torch.randn(n, d) * d**-0.5)
        self.ln_pre = nn.LayerNorm(d)
        self.transformer = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_post = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Conv2d(d, 3 * p * p, 1))
        self.conv_out = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, z_q):  # (B, N, token_size)
        b, g2, g, p = z_q.shape[0], self.g**2, self.g, self.p
        lat = self.decoder_embed(z_q) + self.latent_token_positional_embedding
        queries = torch.cat([self.class_embedding, self.mask_token[0].expand(g2, self.d)], 0) + self.positional_embedding
        x = self.ln_pre(torch.cat([queries.expand(b, g2 + 1, self.d), lat], 1))
        for blk in self.transformer:
            x = blk(x)
        x = self.ln_post(x[:, 1 : 1 + g2])  # (B, g², D)
        patches = F.linear(x, self.ffn[0].weight.flatten(1), self.ffn[0].bias)  # (B, g², p·p·3)
        # einops 'b (p1 p2 c) h w -> b c (h p1) (w p2)'
        pixels = patches.reshape(b, g, g, p, p, 3).permute(0, 5, 1, 3, 2, 4).reshape(b, 3, g * p, g * p)
        return self.conv_out(pixels)


def lfq(z, depths: int, commitment_cost: float):
    """Multi-depth LFQ (MDQ): q_s = sign(r_s) * 2^-s of the residual r_s = z - sum_{t<s} q_t. Returns the
    straight-through z_q and the commitment loss (mean over depths of commitment_cost * mse(q_s, r_s))."""
    cum = torch.zeros_like(z)
    per_depth = []
    for s in range(depths):
        r = z - cum  # carries the gradient to z
        q = torch.where(r.detach() > 0, 1.0, -1.0) * 2.0**-s
        per_depth.append(F.mse_loss(q, r))
        cum = cum + q
    z_q = z + (cum - z).detach()
    return z_q, commitment_cost * torch.stack(per_depth).mean()


class Model(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        vq = cfg["model"]["vq_model"]
        size = cfg["dataset"]["preprocessing"]["crop_size"]
        n, t = vq["num_latent_tokens"], vq["token_size"]
        enc, dec = VIT_SIZES[vq["vit_enc_model_size"]], VIT_SIZES[vq["vit_dec_model_size"]]
        self.depths, self.commitment_cost = vq["num_depths"], vq["commitment_cost"]
        self.latent_tokens = nn.Parameter(torch.randn(n, enc[0]) * enc[0] ** -0.5)
        self.encoder = Encoder(*enc, vq["vit_enc_patch_size"], size, n, t)
        self.decoder = Decoder(*dec, vq["vit_dec_patch_size"], size, n, t)

    def loss(self, x, losses: dict):
        z_q, quantizer = lfq(self.encoder(x, self.latent_tokens), self.depths, self.commitment_cost)
        recon = self.decoder(z_q)
        return losses["reconstruction_weight"] * F.mse_loss(recon, x) + losses["quantizer_weight"] * quantizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?")
    ap.add_argument("--print-config", action="store_true")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--split", action="store_true",
                    help="also time forward + backward alone (gradients_s) and the update alone (update_s)")
    a = ap.parse_args()
    if a.print_config:
        print(json.dumps(bench_config(a.tokens)))
        return
    cfg = json.load(open(a.config))
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = Model(cfg)
    opt_cfg = cfg["optimizer"]["params"]
    named = list(model.named_parameters())
    decay = [p for n, p in named if p.ndim >= 2 and not any(s in n for s in NO_DECAY)]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and not any(s in n for s in NO_DECAY))]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": opt_cfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=opt_cfg["learning_rate"], betas=(opt_cfg["beta1"], opt_cfg["beta2"]), eps=1e-8,
    )
    params = [p for _, p in named]
    shadow = [p.detach().clone() for p in params]
    size = cfg["dataset"]["preprocessing"]["crop_size"]
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (a.batch, size, size, 3), dtype=torch.uint8, generator=gen)
    max_norm = cfg["training"]["max_grad_norm"]

    def step(i: int) -> float:
        # The u8 NHWC -> float NCHW conversion is part of marvel's step too.
        x = images.permute(0, 3, 1, 2).float() / 255.0
        opt.zero_grad(set_to_none=True)
        loss = model.loss(x, cfg["losses"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(shadow, [p.detach() for p in params], 1.0 - ema_decay(i + 1))
        return loss.item()

    def gradients() -> None:
        opt.zero_grad(set_to_none=True)
        model.loss(images.permute(0, 3, 1, 2).float() / 255.0, cfg["losses"]).backward()

    def update(i: int) -> None:
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(shadow, [p.detach() for p in params], 1.0 - ema_decay(i + 1))

    timed = time_training(step, a.warmup, a.runs, a.split, gradients, update)
    print(json.dumps({
        "engine": "torch", "version": torch.__version__, "params": sum(p.numel() for p in params), "threads": torch.get_num_threads(), "batch": a.batch,
        **timed,
    }))


if __name__ == "__main__":
    main()
