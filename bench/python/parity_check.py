"""Checks titok_torch.py against the parity fixtures (reference PyTorch outputs): titok_vq_legacy (the released
two-stage layout), titok_vq_nonlegacy (the single layout's pixel head) and marvel_lfq (MARVEL's multi-depth LFQ), so
that every layout and quantizer the benchmark times has been checked against the reference.

Tokens must be identical and every float within 1e-4 (max abs error); prints one JSON line with the figures and
exits non-zero on a mismatch, so the benchmark never times a baseline that computes something else.

    python parity_check.py [--parity DIR] [--threads N]
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
DEFAULT_PARITY = Path(os.environ.get("MARVEL_PARITY_DIR", HERE.parents[2] / "shared" / "parity"))
TOL = 1e-4


def err(a, b):
    return float((a[: b.shape[0]] - b).abs().max())


def check(fx: Path) -> dict:
    model = load_titok(fx)
    inputs = load_file(str(fx / "inputs.safetensors"))
    exp = load_file(str(fx / "expected.safetensors"))
    # x = float32(u8) / 255 with IEEE division: the fixture's exact table.
    x = inputs["u8_to_f32"][inputs["images_u8"].long()]
    out = {"fixture": fx.name}
    floats = {}
    with torch.inference_mode():
        latent = model.encode_latent(x)
        z_q, tokens = model.encode(x)
        floats["enc_latent"] = err(latent, exp["enc_latent"])
        if fx.name == "marvel_lfq":
            # The fixture keeps the depth axis last after a singleton row axis: (B, 1, N, D).
            out["tokens_identical"] = bool(torch.equal(tokens, exp["tokens"].squeeze(1)))
            for d in range(1, model.cfg.num_depths + 1):
                prefix = tokens[..., :d]
                floats[f"z_q_depth{d}"] = err(model.quantize.dequantize(prefix), exp[f"z_q_depth{d}"])
                floats[f"recon_depth{d}"] = err(model.decode_tokens(prefix[:1]), exp[f"recon_depth{d}"])
        else:
            out["tokens_identical"] = bool(torch.equal(tokens, exp["tokens"].reshape(tokens.shape)))
            floats["z_q"] = err(z_q, exp["z_q"])
            recon = model.decode_tokens(tokens)
            floats["recon"] = err(recon, exp["recon"])
            if model.cfg.is_legacy:
                floats["dec_logits"] = err(model.decoder(z_q), exp["dec_logits"])
                u8 = (recon.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1)
                diff = (u8.int() - exp["recon_u8"].int()).abs()
                out["recon_u8_differ"] = int((diff > 0).sum())
                out["recon_u8_max_diff"] = int(diff.max())
    out["tokens"] = int(tokens.numel())
    out.update(floats)
    out["ok"] = out["tokens_identical"] and all(v <= TOL for v in floats.values()) and out.get("recon_u8_max_diff", 0) <= 1
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--parity", type=Path, default=DEFAULT_PARITY)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    names = ["titok_vq_legacy", "titok_vq_nonlegacy", "marvel_lfq"]
    missing = [n for n in names if not (args.parity / n / "expected.safetensors").is_file()]
    if missing:
        # No fixtures, no verified baseline: the benchmark must not time it.
        print(json.dumps({"ok": False, "reason": f"no parity fixtures {missing} under {args.parity} (MARVEL_PARITY_DIR)"}))
        return 1
    cases = [check(args.parity / n) for n in names]
    print(json.dumps({"ok": all(c["ok"] for c in cases), "cases": cases}))
    return 0 if all(c["ok"] for c in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
