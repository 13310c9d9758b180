"""PyTorch eager twin of marvel's `stage2` training step, for bench/train.sh.

The reference's stage 2 (TRAINING.md, `titok_stage2_losses`) on a tiny layout, the one of that parity fixture:
frozen encoder + VQ (under no_grad), trainable decoder ViT + legacy 1024-logit head + pixel codebook + MaskGIT pixel
decoder (titok_torch.py), on pixels with L2 + 0.1 * perceptual (a torchvision-layout ConvNeXt of tiny widths on the
antialiased 224 resize, ImageNet normalisation, MSE of the logits) + 0.01 * GAN (the reference's NLayerDiscriminator,
frozen in the generator step); then the discriminator's own step on the same images and detached reconstructions
(hinge + 0.001 * LeCam, its own AdamW). Each network's gradients are clipped to 1.0 before its AdamW; the model's
weights have an EMA (the trainable ones move, the frozen ones are copied, as the reference's EMAModel). The GAN terms
are on from step 0 (`discriminator_start` 0), so every step is a full one.

    train_stage2_torch.py --print-config WORKDIR       # writes the weights into WORKDIR, prints the config (JSON)
    train_stage2_torch.py CONFIG_JSON --threads 2 --batch 2 --warmup 1 --runs 3 [--split]

Both engines read the config and start from the same files in WORKDIR: `model.safetensors` (the model, reference key
names; marvel gets it as its init folder), `perceptual.safetensors` (torchvision key names) and
`discriminator.safetensors` (reference key names, with the blur-kernel buffers). Prints one JSON line as
train_torch.py does; `params` counts the model's parameters (frozen ones included), as marvel's side does.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from step_timing import ema_decay, time_training
from titok_torch import Cfg, TiTok, randomize

NO_DECAY = ("ln", "bias", "latent_tokens", "mask_token", "embedding", "norm", "gamma", "embed")
TRAINABLE = ("decoder.", "pixel_quantize.", "pixel_decoder.")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def bench_config(work: Path) -> dict:
    """The `titok_stage2_losses` fixture's tiny layout with the stage-2 yaml's losses, the GAN on from step 0."""
    lr = 1e-4
    return {
        "model": {
            "vq_model": {
                "codebook_size": 4096, "token_size": 12, "use_l2_norm": True, "commitment_cost": 0.0,
                "vit_enc_model_size": "custom", "vit_dec_model_size": "custom",
                "vit_enc_patch_size": 16, "vit_dec_patch_size": 16, "num_latent_tokens": 8,
                "vit_enc_width": 64, "vit_enc_num_layers": 2, "vit_enc_num_heads": 4,
                "vit_dec_width": 64, "vit_dec_num_layers": 2, "vit_dec_num_heads": 4,
                "finetune_decoder": True, "is_legacy": True, "quantize_mode": "vq",
                "pixel_decoder": {"hidden_channels": 8, "channel_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2,
                                  "z_channels": 64, "codebook_size": 1024, "norm_num_groups": 8},
            }
        },
        "dataset": {"preprocessing": {"crop_size": 256}},
        "losses": {
            "discriminator_start": 0, "quantizer_weight": 0.0, "discriminator_factor": 1.0,
            "discriminator_weight": 0.01, "perceptual_loss": "convnext_s", "perceptual_weight": 0.1,
            "reconstruction_loss": "l2", "reconstruction_weight": 1.0, "lecam_regularization_weight": 0.001,
            "lecam_ema_decay": 0.999,
            "perceptual_weights": str((work / "perceptual.safetensors").resolve()),
            "discriminator_weights": str((work / "discriminator.safetensors").resolve()),
            "perceptual_convnext": {"block_setting": [[8, 16, 1], [16, 32, 1], [32, 64, 2], [64, None, 1]],
                                    "stochastic_depth_prob": 0.0, "num_classes": 1000, "norm_eps": 1e-6},
            "discriminator": {"num_channels": 3, "hidden_channels": 32, "num_stages": 3, "blur_resample": True,
                              "blur_kernel_size": 4, "norm_num_groups": 32},
        },
        "optimizer": {"name": "adamw", "params": {"learning_rate": lr, "discriminator_learning_rate": lr,
                                                  "beta1": 0.9, "beta2": 0.99, "weight_decay": 1e-4}},
        "lr_scheduler": {"scheduler": "cosine", "params": {"learning_rate": lr, "warmup_steps": 0, "end_lr": lr / 10}},
        "training": {"gradient_accumulation_steps": 1, "use_ema": True, "max_train_steps": 1000, "max_grad_norm": 1.0},
    }


# ----------------------------------------------------------------------------------------------- ConvNeXt


class LayerNorm2d(nn.LayerNorm):
    """torchvision's: LayerNorm over the channels at each position."""

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class Permute(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


class CNBlock(nn.Module):
    def __init__(self, c: int, eps: float):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(c, c, 7, padding=3, groups=c), Permute([0, 2, 3, 1]), nn.LayerNorm(c, eps=eps),
            nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c), Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.ones(c, 1, 1))

    def forward(self, x):
        return x + self.layer_scale * self.block(x)


class ConvNeXt(nn.Module):
    """torchvision's ConvNeXt (stochastic depth 0), its key names."""

    def __init__(self, cfg: dict):
        super().__init__()
        eps, setting = cfg["norm_eps"], cfg["block_setting"]
        c0 = setting[0][0]
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, c0, 4, stride=4), LayerNorm2d(c0, eps=eps))]
        for c, out, n in setting:
            layers.append(nn.Sequential(*(CNBlock(c, eps) for _ in range(n))))
            if out is not None:
                layers.append(nn.Sequential(LayerNorm2d(c, eps=eps), nn.Conv2d(c, out, 2, stride=2)))
        self.features = nn.Sequential(*layers)
        last = setting[-1][1] or setting[-1][0]
        self.classifier = nn.Sequential(LayerNorm2d(last, eps=eps), nn.Flatten(1), nn.Linear(last, cfg["num_classes"]))

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1))


def perceptual_loss(net: ConvNeXt, x, recon):
    """The reference's PerceptualLoss("convnext_s"): resize to 224 (antialiased bilinear), ImageNet
    normalisation, MSE of the logits."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def prep(t):
        t = F.interpolate(t, size=224, mode="bilinear", align_corners=False, antialias=True)
        return (t - mean) / std

    return F.mse_loss(net(prep(x)), net(prep(recon)))


# ----------------------------------------------------------------------------------------------- discriminator


class Conv2dSame(nn.Conv2d):
    """nn.Conv2d with TensorFlow "same" padding (stride 1 here)."""

    def forward(self, x):
        k, s = self.kernel_size[0], self.stride[0]
        pads = []
        for i in (x.shape[-1], x.shape[-2]):
            total = max((math.ceil(i / s) - 1) * s + k - i, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


class BlurBlock(nn.Module):
    def __init__(self, size: int):
        super().__init__()
        row = torch.tensor([math.comb(size - 1, i) for i in range(size)], dtype=torch.float32)
        kernel = row[:, None] * row[None, :]
        self.register_buffer("kernel", (kernel / kernel.sum())[None, None])
        self.size = size

    def forward(self, x):
        total = max((math.ceil(x.shape[-1] / 2) - 1) * 2 + self.size - x.shape[-1], 0)
        x = F.pad(x, [total // 2, total - total // 2] * 2)
        c = x.shape[1]
        return F.conv2d(x, self.kernel.expand(c, -1, -1, -1), stride=2, groups=c)


class NLayerDiscriminator(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        h, stages = cfg["hidden_channels"], cfg["num_stages"]
        channels = [h] + [h * 2**i for i in range(stages)]
        self.block_in = nn.Sequential(Conv2dSame(cfg["num_channels"], h, 5), nn.LeakyReLU(0.1))
        self.blocks = nn.Sequential(*(
            nn.Sequential(Conv2dSame(channels[i], channels[i + 1], 3), BlurBlock(cfg["blur_kernel_size"]),
                          nn.GroupNorm(cfg["norm_num_groups"], channels[i + 1]), nn.LeakyReLU(0.1))
            for i in range(stages)
        ))
        self.pool = nn.AdaptiveMaxPool2d((16, 16))
        c = channels[-1]
        self.to_logits = nn.Sequential(Conv2dSame(c, c, 1), nn.LeakyReLU(0.1), Conv2dSame(c, 1, 5))

    def forward(self, x):
        return self.to_logits(self.pool(self.blocks(self.block_in(x))))


# ----------------------------------------------------------------------------------------------- setup


@torch.no_grad()
def random_init(net: nn.Module, seed: int) -> None:
    """Seeded weights with sane activation scales: 1/sqrt(fan_in) normal weights, zero biases, unit norms."""
    g = torch.Generator().manual_seed(seed)
    for name, p in net.named_parameters():
        if name.endswith("layer_scale"):
            p.fill_(0.1)
        elif p.dim() >= 2:
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.fill_(1.0)


def write_weights(work: Path, cfg: dict) -> None:
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = TiTok(Cfg(cfg))
    randomize(model, 0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(work / "model.safetensors"))
    (work / "config.json").write_text(json.dumps({"model": cfg["model"], "dataset": cfg["dataset"]}))
    losses = cfg["losses"]
    convnext = ConvNeXt(losses["perceptual_convnext"])
    random_init(convnext, 1)
    save_file(convnext.state_dict(), losses["perceptual_weights"])
    disc = NLayerDiscriminator(losses["discriminator"])
    random_init(disc, 2)
    save_file(disc.state_dict(), losses["discriminator_weights"])


def adamw(named, cfg: dict, lr: float):
    p = cfg["optimizer"]["params"]
    decay = [t for n, t in named if t.ndim >= 2 and not any(s in n for s in NO_DECAY)]
    no_decay = [t for n, t in named if not (t.ndim >= 2 and not any(s in n for s in NO_DECAY))]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": p["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(p["beta1"], p["beta2"]), eps=1e-8,
    )


def random_images(batch: int, size: int, seed: int = 1) -> torch.Tensor:
    """bench_train.rs's images (xorshift64 bytes, the same generator and seed): both engines see the same batch,
    so their first losses, computed from the same weights before any update, must agree."""
    mask = (1 << 64) - 1
    s = ((seed * 0x9E3779B97F4A7C15) & mask) | 1
    out = bytearray(batch * size * size * 3)
    for i in range(len(out)):
        s ^= (s << 13) & mask
        s ^= s >> 7
        s ^= (s << 17) & mask
        out[i] = s >> 56
    return torch.frombuffer(out, dtype=torch.uint8).reshape(batch, size, size, 3)



def load_networks(cfg):
    """The model (stage-2 parameters trainable, the rest frozen), the frozen perceptual ConvNeXt and the
    discriminator, each loaded strictly from the files the config names (next to the perceptual weights)."""
    losses = cfg["losses"]
    work = Path(losses["perceptual_weights"]).parent
    model = TiTok(Cfg(cfg))
    model.load_state_dict(load_file(str(work / "model.safetensors")), strict=True)
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith(TRAINABLE))
    convnext = ConvNeXt(losses["perceptual_convnext"]).eval()
    convnext.load_state_dict(load_file(losses["perceptual_weights"]), strict=True)
    for p in convnext.parameters():
        p.requires_grad_(False)
    disc = NLayerDiscriminator(losses["discriminator"])
    disc.load_state_dict(load_file(losses["discriminator_weights"]), strict=True)
    return model, convnext, disc

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?")
    ap.add_argument("--print-config", metavar="WORKDIR")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--split", action="store_true",
                    help="also time the generator's forward + backward alone and the model's update alone")
    a = ap.parse_args()
    if a.print_config:
        work = Path(a.print_config)
        cfg = bench_config(work)
        write_weights(work, cfg)
        print(json.dumps(cfg))
        return
    cfg = json.load(open(a.config))
    torch.set_num_threads(a.threads)
    model, convnext, disc = load_networks(cfg)
    losses = cfg["losses"]
    named = list(model.named_parameters())
    trainable = [(n, p) for n, p in named if p.requires_grad]
    lr = cfg["optimizer"]["params"]["learning_rate"]
    g_opt = adamw(trainable, cfg, lr)
    d_opt = adamw(list(disc.named_parameters()), cfg, cfg["optimizer"]["params"]["discriminator_learning_rate"])
    g_params, d_params = [p for _, p in trainable], list(disc.parameters())
    params = [p for _, p in named]
    shadow = [p.detach().clone() for p in params]
    moving = [i for i, p in enumerate(params) if p.requires_grad]
    frozen = [i for i, p in enumerate(params) if not p.requires_grad]
    lecam_real, lecam_fake = torch.zeros(()), torch.zeros(())
    max_norm = cfg["training"]["max_grad_norm"]
    size = cfg["dataset"]["preprocessing"]["crop_size"]
    images = random_images(a.batch, size)

    def generator_loss(x):
        with torch.no_grad():
            z_q, _ = model.encode(x)
        recon = model.decode(z_q)
        for p in d_params:
            p.requires_grad_(False)
        gan = -disc(recon).mean()
        for p in d_params:
            p.requires_grad_(True)
        total = (losses["reconstruction_weight"] * F.mse_loss(recon, x)
                 + losses["perceptual_weight"] * perceptual_loss(convnext, x, recon)
                 + losses["discriminator_weight"] * losses["discriminator_factor"] * gan)
        return total, recon

    def update_model(i: int) -> None:
        torch.nn.utils.clip_grad_norm_(g_params, max_norm)
        g_opt.step()
        with torch.no_grad():
            torch._foreach_lerp_([shadow[j] for j in moving], [params[j].detach() for j in moving], 1.0 - ema_decay(i + 1))
            torch._foreach_copy_([shadow[j] for j in frozen], [params[j].detach() for j in frozen])

    def step(i: int) -> float:
        nonlocal lecam_real, lecam_fake
        x = images.permute(0, 3, 1, 2).float() / 255.0
        g_opt.zero_grad(set_to_none=True)
        loss, recon = generator_loss(x)
        loss.backward()
        update_model(i)
        # The discriminator's step on the same images and the detached reconstructions.
        d_opt.zero_grad(set_to_none=True)
        real, fake = disc(x), disc(recon.detach())
        hinge = 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
        lecam = F.relu(real.mean() - lecam_fake).pow(2) + F.relu(lecam_real - fake.mean()).pow(2)
        d_loss = losses["discriminator_factor"] * hinge + losses["lecam_regularization_weight"] * lecam
        d_loss.backward()
        torch.nn.utils.clip_grad_norm_(d_params, max_norm)
        d_opt.step()
        with torch.no_grad():
            decay = losses["lecam_ema_decay"]
            lecam_real = lecam_real * decay + real.mean() * (1 - decay)
            lecam_fake = lecam_fake * decay + fake.mean() * (1 - decay)
        return loss.item()

    def gradients() -> None:
        g_opt.zero_grad(set_to_none=True)
        generator_loss(images.permute(0, 3, 1, 2).float() / 255.0)[0].backward()

    timed = time_training(step, a.warmup, a.runs, a.split, gradients, update_model)
    print(json.dumps({
        "engine": "torch", "version": torch.__version__, "params": sum(p.numel() for p in params),
        "threads": torch.get_num_threads(), "batch": a.batch,
        **timed,
    }))


if __name__ == "__main__":
    main()
