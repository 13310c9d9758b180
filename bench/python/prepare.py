"""Makes the benchmark's inputs for one layout, once: the random-weight model, its ONNX graphs and the check batch.

    python prepare.py --work bench/.work --layout s128|l32|single [--force]

Writes WORK/LAYOUT/{config.json, model.safetensors} (seeded random weights, reference key names: marvel, the torch
baseline and the ONNX export all load this one file) and WORK/LAYOUT/onnx/*.onnx (dynamic batch axis, opset 17): the
stages of titok_torch.py, `encode` + `decoder` + `pixel` for the two-stage layouts, `encode` + `decoder` (z_q -> image)
for the single one. Then the check batch: WORK/LAYOUT/check.safetensors holds two random u8 images, their float
input (u8 / 255), torch eager's tokens, z_q, decoder output, pixel-stage output and `recon` (decode_tokens(tokens),
what Node's decodeFloat returns); the images are redrawn until every token is at least MARGIN from a tie (another
engine's last-bit differences must not be able to flip one). onnxruntime's outputs are compared with torch's there
and then. Prints one JSON line; exits non-zero when onnxruntime disagrees, so no engine is timed on a different
computation.
"""

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
import titok_torch as tt  # noqa: E402

SEED = 20240607
OPSET = 17
MARGIN = 1e-5
# Floats: max |engine - torch| <= TOL * max(1, max |torch|), the scale of the stage's output.
TOL = 1e-3


def make_weights(folder: Path, layout: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = tt.LAYOUTS[layout]()
    torch.manual_seed(SEED)
    model = tt.TiTok(tt.Cfg(cfg))
    tt.randomize(model, SEED)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"note": f"random {layout} weights, seed {SEED}"})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def stage_graphs(model: tt.TiTok) -> dict:
    c = model.cfg
    g = c.image_size // c.dec["patch"]
    graphs = {
        "encode": (tt.EncodeGraph(model), torch.rand(1, 3, c.image_size, c.image_size), ["images"], ["tokens", "z_q"]),
        "decoder": (tt.DecoderGraph(model), torch.randn(1, c.token_size, 1, c.num_latent_tokens), ["z_q"],
                    ["logits" if c.is_legacy else "image"]),
    }
    if c.is_legacy:
        graphs["pixel"] = (tt.PixelGraph(model), torch.randn(1, tt.LEGACY_LOGITS, g, g), ["logits"], ["image"])
    return graphs


def export(model: tt.TiTok, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, (mod, example, ins, outs) in stage_graphs(model).items():
        axes = {n: {0: "batch"} for n in ins + outs}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                mod.eval(),
                (example,),
                str(out / f"{name}.onnx"),
                input_names=ins,
                output_names=outs,
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
                do_constant_folding=True,
            )


def check_batch(model: tt.TiTok) -> dict:
    """Two random u8 images whose tokens are all at least MARGIN from a tie, and torch's outputs for them."""
    for seed in range(1, 101):
        u8 = torch.randint(0, 256, (2, 256, 256, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
        x = u8.permute(0, 3, 1, 2).float() / 255
        with torch.inference_mode():
            z = model.encode_latent(x)
            margin = float(model.quantize.margin(z).min())
            if margin < MARGIN:
                continue
            z_q, tokens = model.encode(x)
            t = {"images_u8": u8.contiguous(), "images": x.contiguous(), "tokens": tokens.contiguous(),
                 "z_q": z_q.contiguous(), "recon": model.decode_tokens(tokens).contiguous()}
            out = model.decoder(z_q)
            if model.cfg.is_legacy:
                t["logits"] = out.contiguous()
                t["image"] = model.pixel_stage(out).contiguous()
            else:
                t["image"] = out.contiguous()
            return {"tensors": t, "seed": seed, "margin": margin}
    raise RuntimeError(f"no check batch with every token {MARGIN} from a tie in 100 draws")


def rel_err(got, want) -> float:
    want = np.asarray(want)
    return float(np.abs(np.asarray(got) - want).max() / max(1.0, float(np.abs(want).max())))


def check_ort(folder: Path, t: dict, legacy: bool) -> dict:
    import onnxruntime as ort

    def sess(name):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        so.inter_op_num_threads = 1
        return ort.InferenceSession(str(folder / "onnx" / f"{name}.onnx"), so, providers=["CPUExecutionProvider"])

    o_tokens, o_zq = sess("encode").run(None, {"images": t["images"].numpy()})
    (o_dec,) = sess("decoder").run(None, {"z_q": t["z_q"].numpy()})
    report = {
        "ort_tokens_identical": bool(np.array_equal(o_tokens, t["tokens"].numpy())),
        "ort_z_q_err": rel_err(o_zq, t["z_q"]),
    }
    if legacy:
        (o_image,) = sess("pixel").run(None, {"logits": t["logits"].numpy()})
        report["ort_logits_err"] = rel_err(o_dec, t["logits"])
        report["ort_image_err"] = rel_err(o_image, t["image"])
    else:
        report["ort_image_err"] = rel_err(o_dec, t["image"])
    floats = [v for k, v in report.items() if k.endswith("_err")]
    report["ok"] = report["ort_tokens_identical"] and all(v <= TOL for v in floats)
    return report


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--layout", choices=sorted(tt.LAYOUTS), default="s128")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    folder = args.work / args.layout
    made = []
    if args.force or not (folder / "model.safetensors").is_file():
        make_weights(folder, args.layout)
        made.append("weights")
    model = tt.load_titok(folder)
    names = stage_graphs(model).keys()
    if args.force or made or not all((folder / "onnx" / f"{n}.onnx").is_file() for n in names):
        export(model, folder / "onnx")
        made.append("onnx")
    batch = check_batch(model)
    save_file(batch["tensors"], str(folder / "check.safetensors"))
    report = {"layout": args.layout, "made": made, "params": sum(p.numel() for p in model.parameters()),
              "check_seed": batch["seed"], "check_margin": batch["margin"], "tol": TOL}
    report.update(check_ort(folder, batch["tensors"], model.cfg.is_legacy))
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
