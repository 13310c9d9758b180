"""TiTok and MARVEL inference in plain PyTorch, in the two layouts marvel runs:

- two-stage "legacy" (the released TiTok checkpoints): legacy encoder reshape, 1024-logit decoder head, MaskGIT-VQGAN
  pixel decoder;
- `single` (non-legacy, `finetune_decoder` false; the built-in model's): the decoder predicts pixels (1x1 conv to
  3*p*p, depth-to-space, 3x3 conv_out);
each with a VQ codebook (`quantize_mode` "vq") or MARVEL's multi-depth lookup-free quantizer ("lfq").

An independent implementation written for the benchmark baseline: it follows the conventions documented in
shared/parity/README.md and uses the reference checkpoint's state-dict key names, so `load_state_dict(strict=True)`
accepts the same `model.safetensors` that marvel loads. `parity_check.py` verifies it against the parity fixtures
(titok_vq_legacy, titok_vq_nonlegacy, marvel_lfq: every layout and quantizer above).

Stages (what the benchmark times):
  encode(x)            images (B,3,256,256) in [0,1] -> (z_q (B,C,1,N), tokens: VQ (B,N), LFQ (B,N,D) int64)
  decoder(z_q)         legacy: -> logits (B,1024,16,16)                (decoder ViT + legacy head)
                       single: -> image (B,3,256,256), unclamped       (decoder ViT + pixel head)
  pixel_stage(logits)  legacy only: -> image, unclamped                (softmax mix of the pixel codebook +
                                                                        MaskGIT decoder)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

VIT_SIZES = {"small": (512, 8, 8), "base": (768, 12, 12), "large": (1024, 24, 16)}
RELEASED_PIXEL_DECODER = {
    "hidden_channels": 128,
    "channel_mult": [1, 1, 2, 2, 4],
    "num_res_blocks": 2,
    "z_channels": 256,
    "codebook_size": 1024,
    "norm_num_groups": 32,
}
LEGACY_LOGITS = 1024


# ----------------------------------------------------------------------------------------------- config


class Cfg:
    """The subset of the reference config.json this layout needs, with the released defaults applied."""

    def __init__(self, raw: dict):
        vq = raw["model"]["vq_model"]
        self.image_size = raw.get("dataset", {}).get("preprocessing", {}).get("crop_size", 256)
        self.token_size = vq["token_size"]
        self.codebook_size = vq.get("codebook_size")  # LFQ: 2^token_size implicit codes per depth
        self.use_l2_norm = vq.get("use_l2_norm", False)
        self.num_latent_tokens = vq["num_latent_tokens"]
        self.is_legacy = vq.get("is_legacy", True)
        self.finetune_decoder = vq.get("finetune_decoder", True)
        self.quantize_mode = vq.get("quantize_mode", "vq")
        self.num_depths = vq.get("num_depths", 1)
        if self.quantize_mode not in ("vq", "lfq"):
            raise ValueError(f"unknown quantize_mode {self.quantize_mode!r}")
        if self.is_legacy != self.finetune_decoder:
            raise ValueError("titok_torch implements the two-stage legacy layout and the single (non-legacy) one")
        self.enc = self._vit(vq, "enc")
        self.dec = self._vit(vq, "dec")
        self.pixel = dict(RELEASED_PIXEL_DECODER, **vq.get("pixel_decoder", {})) if self.is_legacy else None

    @staticmethod
    def _vit(vq: dict, which: str):
        size = vq[f"vit_{which}_model_size"]
        if size == "custom":
            width = vq[f"vit_{which}_width"]
            layers = vq[f"vit_{which}_num_layers"]
            heads = vq[f"vit_{which}_num_heads"]
        else:
            width, layers, heads = VIT_SIZES[size]
        return {"width": width, "layers": layers, "heads": heads, "patch": vq[f"vit_{which}_patch_size"]}


# ----------------------------------------------------------------------------------------------- ViT


class SelfAttention(nn.Module):
    """Multi-head self-attention with a packed q/k/v projection (key names as nn.MultiheadAttention)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, L, D)
        b, l, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.reshape(b, l, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, H, L, hd), scale 1/sqrt(hd)
        return self.out_proj(out.transpose(1, 2).reshape(b, l, d))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden)
        self.c_proj = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))  # exact (erf) GELU


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, 4 * dim)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    def __init__(self, cfg: Cfg):
        super().__init__()
        v = cfg.enc
        d, p = v["width"], v["patch"]
        self.grid = cfg.image_size // p
        self.n = cfg.num_latent_tokens
        self.width = d
        self.token_size = cfg.token_size
        self.patch_embed = nn.Conv2d(3, d, kernel_size=p, stride=p)
        self.class_embedding = nn.Parameter(torch.zeros(1, d))
        self.positional_embedding = nn.Parameter(torch.zeros(self.grid**2 + 1, d))
        self.latent_token_positional_embedding = nn.Parameter(torch.zeros(self.n, d))
        self.ln_pre = nn.LayerNorm(d)
        self.transformer = nn.ModuleList(Block(d, v["heads"]) for _ in range(v["layers"]))
        self.ln_post = nn.LayerNorm(d)
        self.conv_out = nn.Conv2d(d, cfg.token_size, kernel_size=1)
        self.is_legacy = cfg.is_legacy

    def forward(self, images: torch.Tensor, latent_tokens: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        patches = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, g*g, D)
        cls = self.class_embedding.expand(b, 1, self.width)
        x = torch.cat([cls, patches], dim=1) + self.positional_embedding
        lat = (latent_tokens + self.latent_token_positional_embedding).expand(b, self.n, self.width)
        x = self.ln_pre(torch.cat([x, lat], dim=1))
        for blk in self.transformer:
            x = blk(x)
        lat = self.ln_post(x[:, 1 + self.grid**2 :])  # (B, N, D)
        # Legacy layout: the row-major (N, D) matrix is *reshaped* (not transposed) to (D, N, 1); the fixed layout
        # transposes it, so each token keeps its own channels.
        lat = lat.reshape(b, self.width, self.n, 1) if self.is_legacy else lat.transpose(1, 2).reshape(b, self.width, self.n, 1)
        return self.conv_out(lat).reshape(b, self.token_size, 1, self.n)


class Decoder(nn.Module):
    """Mask-token grid attending to the embedded latent tokens; legacy head -> 1024 logits per patch, single head ->
    pixels."""

    def __init__(self, cfg: Cfg):
        super().__init__()
        v = cfg.dec
        d = v["width"]
        self.grid = cfg.image_size // v["patch"]
        self.n = cfg.num_latent_tokens
        self.width = d
        self.decoder_embed = nn.Linear(cfg.token_size, d)
        self.class_embedding = nn.Parameter(torch.zeros(1, d))
        self.positional_embedding = nn.Parameter(torch.zeros(self.grid**2 + 1, d))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.latent_token_positional_embedding = nn.Parameter(torch.zeros(self.n, d))
        self.ln_pre = nn.LayerNorm(d)
        self.transformer = nn.ModuleList(Block(d, v["heads"]) for _ in range(v["layers"]))
        self.ln_post = nn.LayerNorm(d)
        self.patch = v["patch"]
        self.is_legacy = cfg.is_legacy
        if cfg.is_legacy:
            self.ffn = nn.Sequential(nn.Conv2d(d, 2 * d, 1), nn.Tanh(), nn.Conv2d(2 * d, LEGACY_LOGITS, 1))
        else:
            # The reference's second ffn entry is a parameterless Rearrange; index 0 keeps its key names.
            self.ffn = nn.Sequential(nn.Conv2d(d, 3 * self.patch**2, 1))
            self.conv_out = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, z_q: torch.Tensor) -> torch.Tensor:
        b, c, _, n = z_q.shape
        g2 = self.grid**2
        lat = self.decoder_embed(z_q.reshape(b, c, n).transpose(1, 2)) + self.latent_token_positional_embedding
        queries = torch.cat([self.class_embedding, self.mask_token[0].expand(g2, self.width)], dim=0)
        queries = (queries + self.positional_embedding).expand(b, g2 + 1, self.width)
        x = self.ln_pre(torch.cat([queries, lat], dim=1))
        for blk in self.transformer:
            x = blk(x)
        x = self.ln_post(x[:, 1 : 1 + g2])  # (B, g*g, D)
        x = x.transpose(1, 2).reshape(b, self.width, self.grid, self.grid)
        if self.is_legacy:
            return self.ffn(x)
        g, p = self.grid, self.patch
        patches = self.ffn(x)  # (B, p*p*3, g, g), channels ordered (p1, p2, c)
        # einops 'b (p1 p2 c) h w -> b c (h p1) (w p2)'
        pixels = patches.reshape(b, p, p, 3, g, g).permute(0, 3, 4, 1, 5, 2).reshape(b, 3, g * p, g * p)
        return self.conv_out(pixels)


class VectorQuantizer(nn.Module):
    def __init__(self, cfg: Cfg):
        super().__init__()
        self.l2 = cfg.use_l2_norm
        self.embedding = nn.Embedding(cfg.codebook_size, cfg.token_size)

    def codebook(self) -> torch.Tensor:
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.l2 else w

    def forward(self, z: torch.Tensor):
        """z (B, C, 1, N) -> (z_q straight-through value (B, C, 1, N), tokens (B, 1, N) int64)."""
        b, c, h, w = z.shape
        zf = z.permute(0, 2, 3, 1).reshape(-1, c)
        if self.l2:
            zf = F.normalize(zf, dim=-1)
        e = self.codebook()
        dist = zf.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * (zf @ e.t())
        idx = dist.argmin(dim=1)
        zq = zf + (e[idx] - zf)
        return zq.reshape(b, h, w, c).permute(0, 3, 1, 2), idx.reshape(b, w)

    def margin(self, z: torch.Tensor) -> torch.Tensor:
        """Per token: the second-smallest distance minus the smallest, (B, N): how far each token is from a tie."""
        c = z.shape[1]
        zf = z.permute(0, 2, 3, 1).reshape(-1, c)
        if self.l2:
            zf = F.normalize(zf, dim=-1)
        e = self.codebook()
        dist = zf.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * (zf @ e.t())
        two = dist.topk(2, dim=1, largest=False).values
        return (two[:, 1] - two[:, 0]).reshape(z.shape[0], -1)

    def dequantize(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, N) -> codebook rows as (B, C, 1, N)."""
        b = tokens.shape[0]
        e = self.codebook()[tokens.reshape(-1)]
        return e.reshape(b, 1, -1, e.shape[-1]).permute(0, 3, 1, 2)


class LookupFreeQuantizer(nn.Module):
    """MARVEL's D-depth residual LFQ: at depth s the residual r = z - cum is replaced by sign(r) * 2^-s (sign(0) = -1),
    the sign pattern (channel k = bit k, LSB first) is the depth's token, and cum accumulates the codes."""

    def __init__(self, cfg: Cfg):
        super().__init__()
        self.bits, self.depths = cfg.token_size, cfg.num_depths

    def _run(self, z: torch.Tensor):
        b, c, h, w = z.shape
        zf = z.permute(0, 2, 3, 1).reshape(-1, c)
        weights = 2 ** torch.arange(c, dtype=torch.int64)
        cum = torch.zeros_like(zf)
        ids, margins = [], []
        for s in range(self.depths):
            r = zf - cum
            positive = r > 0
            ids.append((positive.long() * weights).sum(-1))
            margins.append(r.abs().amin(-1))
            cum = cum + torch.where(positive, 1.0, -1.0) * 2.0**-s
        return zf, cum, torch.stack(ids, -1).reshape(b, w, self.depths), torch.stack(margins, -1).amin(-1)

    def forward(self, z: torch.Tensor):
        """z (B, C, 1, N) -> (z_q straight-through value (B, C, 1, N), tokens (B, N, D) int64)."""
        b, c, h, w = z.shape
        zf, cum, tokens, _ = self._run(z)
        zq = zf + (cum - zf)
        return zq.reshape(b, h, w, c).permute(0, 3, 1, 2), tokens

    def margin(self, z: torch.Tensor) -> torch.Tensor:
        """Per token: the smallest |residual| over its channels and depths, (B, N): how far it is from a flip."""
        return self._run(z)[3].reshape(z.shape[0], -1)

    def dequantize(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, D) -> cum of every depth, (B, C, 1, N)."""
        b, n, d = tokens.shape
        bits = (tokens.unsqueeze(-1) >> torch.arange(self.bits)) & 1  # (B, N, D, C)
        scale = 2.0 ** -torch.arange(d, dtype=torch.float32)
        cum = torch.zeros(b, n, self.bits)
        for s in range(d):  # depth by depth, in the order marvel and the encoder sum them
            cum = cum + torch.where(bits[:, :, s] > 0, 1.0, -1.0) * scale[s]
        return cum.permute(0, 2, 1).reshape(b, self.bits, 1, n)


# ----------------------------------------------------------------------------------------------- MaskGIT decoder


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-6)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        # MaskGIT quirk: the shortcut projects the block's *output* (the input is dropped).
        self.nin_shortcut = nn.Conv2d(cout, cout, 1, bias=False) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (self.nin_shortcut(h) if self.nin_shortcut is not None else x)


class UpLevel(nn.Module):
    def __init__(self, cin: int, cout: int, blocks: int, groups: int, upsample: bool):
        super().__init__()
        self.block = nn.ModuleList(ResBlock(cin if i == 0 else cout, cout, groups) for i in range(blocks))
        self.upsample_conv = nn.Conv2d(cout, cout, 3, padding=1) if upsample else None

    def forward(self, x):
        for blk in self.block:
            x = blk(x)
        if self.upsample_conv is not None:
            x = self.upsample_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class PixelDecoder(nn.Module):
    def __init__(self, pd: dict):
        super().__init__()
        hc, mult, nrb, groups = pd["hidden_channels"], pd["channel_mult"], pd["num_res_blocks"], pd["norm_num_groups"]
        levels = len(mult)
        deep = hc * mult[-1]
        self.conv_in = nn.Conv2d(pd["z_channels"], deep, 3, padding=1)
        self.mid = nn.ModuleList(ResBlock(deep, deep, groups) for _ in range(nrb))
        self.up = nn.ModuleList(
            UpLevel(hc * mult[min(i + 1, levels - 1)], hc * mult[i], nrb, groups, upsample=i != 0) for i in range(levels)
        )
        self.norm_out = nn.GroupNorm(groups, hc * mult[0], eps=1e-6)
        self.conv_out = nn.Conv2d(hc * mult[0], 3, 3, padding=1)

    def forward(self, z):
        x = self.conv_in(z)
        for blk in self.mid:
            x = blk(x)
        for level in reversed(self.up):  # up.4 (deepest) first, up.0 last
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class PixelQuantize(nn.Module):
    def __init__(self, pd: dict):
        super().__init__()
        self.embedding = nn.Embedding(pd["codebook_size"], pd["z_channels"])


# ----------------------------------------------------------------------------------------------- TiTok


class TiTok(nn.Module):
    def __init__(self, cfg: Cfg):
        super().__init__()
        self.cfg = cfg
        self.latent_tokens = nn.Parameter(torch.zeros(cfg.num_latent_tokens, cfg.enc["width"]))
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg) if cfg.quantize_mode == "vq" else LookupFreeQuantizer(cfg)
        if cfg.is_legacy:
            self.pixel_quantize = PixelQuantize(cfg.pixel)
            self.pixel_decoder = PixelDecoder(cfg.pixel)

    def encode_latent(self, x):
        return self.encoder(x, self.latent_tokens)

    def encode(self, x):
        return self.quantize(self.encode_latent(x))

    def pixel_stage(self, logits):
        """logits (B, 1024, g, g) -> softmax over the 1024 classes, mix of the pixel codebook, pixel decoder."""
        b, k, gh, gw = logits.shape
        probs = logits.softmax(dim=1).flatten(2).transpose(1, 2)  # (B, g*g, 1024)
        mixed = probs @ self.pixel_quantize.embedding.weight  # (B, g*g, z)
        mixed = mixed.transpose(1, 2).reshape(b, -1, gh, gw)
        return self.pixel_decoder(mixed)

    def decode(self, z_q):
        out = self.decoder(z_q)
        return self.pixel_stage(out) if self.cfg.is_legacy else out

    def decode_tokens(self, tokens):
        """VQ: codebook rows (not the straight-through z_q); LFQ: every depth the tokens hold."""
        return self.decode(self.quantize.dequantize(tokens))


# ----------------------------------------------------------------------------------------------- stage wrappers


class EncodeGraph(nn.Module):
    """images -> (tokens (B,N) or (B,N,D) int64, z_q (B,C,1,N))."""

    def __init__(self, m: TiTok):
        super().__init__()
        self.m = m

    def forward(self, images):
        z_q, tokens = self.m.encode(images)
        return tokens, z_q


class DecoderGraph(nn.Module):
    """z_q -> logits (legacy) or image (single)."""

    def __init__(self, m: TiTok):
        super().__init__()
        self.m = m

    def forward(self, z_q):
        return self.m.decoder(z_q)


class PixelGraph(nn.Module):
    def __init__(self, m: TiTok):
        super().__init__()
        self.m = m

    def forward(self, logits):
        return self.m.pixel_stage(logits)


def load_titok(folder: str | Path) -> TiTok:
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = Cfg(json.loads((folder / "config.json").read_text()))
    model = TiTok(cfg)
    state = load_file(str(folder / "model.safetensors"))
    if cfg.quantize_mode == "lfq":
        # MDQ's persistent buffers are derived data: checked against what they must be, then not loaded.
        bits = cfg.token_size
        signs = ((torch.arange(2**bits).unsqueeze(-1) >> torch.arange(bits)) & 1).float() * 2 - 1
        for key, want in (("quantize.codebook", signs), ("quantize.bits_to_indices", 2 ** torch.arange(bits))):
            if key in state and not torch.equal(state.pop(key).to(want.dtype), want):
                raise ValueError(f"{folder}: {key} is not the LFQ's derived buffer")
    model.load_state_dict(state, strict=True)
    return model.eval()


# ----------------------------------------------------------------------------------------------- random weights


def s128_config() -> dict:
    """TiTok-S-128 as released (small ViTs, 128 tokens, VQ 4096x12, L2 norm) with the pixel decoder spelled out."""
    return _two_stage("small", 128)


def l32_config() -> dict:
    """TiTok-L-32 as released (large ViTs: width 1024, 24 layers, 16 heads; 32 tokens, VQ 4096x12, L2 norm): the
    default public model, the layout the MARVEL recipe starts from."""
    return _two_stage("large", 32)


def single_config() -> dict:
    """The built-in model's layout (configs/builtin.yaml's model section): the single (non-legacy) layout, LFQ 12 bits
    x 4 depths, 32 tokens, ViTs of width 256 with 4 encoder and 6 decoder layers, 4 heads, patch 16."""
    vq = {
        "quantize_mode": "lfq",
        "token_size": 12,
        "num_depths": 4,
        "commitment_cost": 0.25,
        "vit_enc_model_size": "custom",
        "vit_enc_width": 256,
        "vit_enc_num_layers": 4,
        "vit_enc_num_heads": 4,
        "vit_dec_model_size": "custom",
        "vit_dec_width": 256,
        "vit_dec_num_layers": 6,
        "vit_dec_num_heads": 4,
        "vit_enc_patch_size": 16,
        "vit_dec_patch_size": 16,
        "num_latent_tokens": 32,
        "is_legacy": False,
        "finetune_decoder": False,
    }
    return {"model": {"vq_model": vq}, "dataset": {"preprocessing": {"crop_size": 256}}}


LAYOUTS = {"s128": s128_config, "l32": l32_config, "single": single_config}


def _two_stage(size: str, tokens: int) -> dict:
    return {
        "model": {
            "vq_model": {
                "codebook_size": 4096,
                "token_size": 12,
                "use_l2_norm": True,
                "commitment_cost": 0.25,
                "vit_enc_model_size": size,
                "vit_dec_model_size": size,
                "vit_enc_patch_size": 16,
                "vit_dec_patch_size": 16,
                "num_latent_tokens": tokens,
                "finetune_decoder": True,
                "is_legacy": True,
                "quantize_mode": "vq",
                "pixel_decoder": dict(RELEASED_PIXEL_DECODER),
            }
        },
        "dataset": {"preprocessing": {"crop_size": 256}},
    }


@torch.no_grad()
def randomize(model: TiTok, seed: int) -> None:
    """Seeded random weights with sane activation scales (every tensor O(1) or 1/sqrt(fan_in) scaled)."""
    g = torch.Generator().manual_seed(seed)

    def normal(t, std, mean=0.0):
        t.copy_(torch.randn(t.shape, generator=g) * std + mean)

    for name, p in model.named_parameters():
        parts = name.split(".")
        parent = parts[-2] if len(parts) > 1 else ""
        if name.endswith("in_proj_weight"):
            fan_in, fan_out = p.shape[1], p.shape[0] // 3
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * bound)
        elif "norm" in parent or parent.startswith("ln"):
            normal(p, 0.1, 1.0) if name.endswith("weight") else normal(p, 0.05)
        elif name.endswith("bias"):
            normal(p, 0.05)
        elif name == "quantize.embedding.weight":
            normal(p, 1.0)
        elif name == "pixel_quantize.embedding.weight":
            p.copy_(torch.rand(p.shape, generator=g) * 2 - 1)
        elif p.dim() >= 2 and "embedding" not in name and "token" not in name:
            fan_in = p[0].numel()
            normal(p, 1.0 / math.sqrt(fan_in))
        else:  # class / positional embeddings, mask token, latent tokens
            normal(p, p.shape[-1] ** -0.5)
    if model.cfg.is_legacy:
        model.decoder.ffn[2].weight.mul_(4.0)
        model.pixel_decoder.conv_out.weight.mul_(0.3)
        model.pixel_decoder.conv_out.bias.add_(0.5)
    else:
        model.decoder.conv_out.weight.mul_(0.3)
        model.decoder.conv_out.bias.add_(0.5)
