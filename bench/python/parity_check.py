"""Checks titok_torch.py against the parity fixture titok_vq_legacy (reference PyTorch outputs).

Tokens must be identical and every float within 1e-4 (max abs error); prints one JSON line with the figures and
exits non-zero on a mismatch, so the benchmark never times a baseline that computes something else.

    python parity_check.py [--fixture DIR] [--threads N]
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from titok_torch import load_titok  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_FIXTURE = Path(os.environ.get("MARVEL_PARITY_DIR", HERE.parents[2] / "shared" / "parity")) / "titok_vq_legacy"
TOL = 1e-4


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    fx = args.fixture
    if not (fx / "expected.safetensors").is_file():
        print(json.dumps({"parity": "skipped", "reason": f"no fixture at {fx}"}))
        return 0
    model = load_titok(fx)
    inputs = load_file(str(fx / "inputs.safetensors"))
    exp = load_file(str(fx / "expected.safetensors"))
    # x = float32(u8) / 255 with IEEE division: the fixture's exact table.
    x = inputs["u8_to_f32"][inputs["images_u8"].long()]

    with torch.inference_mode():
        latent = model.encode_latent(x)
        z_q, tokens = model.encode(x)
        logits = model.decoder(z_q)
        recon = model.decode_tokens(tokens)
        recon_zq = model.pixel_stage(logits)

    def err(a, b):
        return float((a[: b.shape[0]] - b).abs().max())

    out = {
        "fixture": fx.name,
        "tokens_identical": bool(torch.equal(tokens, exp["tokens"])),
        "tokens": int(tokens.numel()),
        "enc_latent": err(latent, exp["enc_latent"]),
        "z_q": err(z_q, exp["z_q"]),
        "dec_logits": err(logits, exp["dec_logits"]),
        "recon": err(recon, exp["recon"]),
        "recon_via_z_q": err(recon_zq, exp["recon"]),
    }
    u8 = (recon.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1)
    diff = (u8.int() - exp["recon_u8"].int()).abs()
    out["recon_u8_differ"] = int((diff > 0).sum())
    out["recon_u8_max_diff"] = int(diff.max())
    floats = ["enc_latent", "z_q", "dec_logits", "recon"]
    out["ok"] = out["tokens_identical"] and all(out[k] <= TOL for k in floats) and out["recon_u8_max_diff"] <= 1
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
