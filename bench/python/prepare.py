"""Makes the benchmark's inputs once: the S-128 random-weight model and its three ONNX graphs.

    python prepare.py --work bench/.work [--force]

Writes WORK/s128/{config.json, model.safetensors} (seeded random weights, reference key names: marvel, the torch
baseline and the ONNX export all load this one file) and WORK/onnx/{encode,decoder,pixel}.onnx (dynamic batch axis,
opset 17), then checks onnxruntime's outputs against torch eager on a batch of 2 (tokens identical, floats close)
so that every engine is timed on the same computation; the torch outputs for that batch are saved to
WORK/check.safetensors, which the marvel runner compares against too. Prints one JSON line.
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


def make_weights(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = tt.s128_config()
    torch.manual_seed(SEED)
    model = tt.TiTok(tt.Cfg(cfg))
    tt.randomize(model, SEED)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"note": f"random S-128 weights, seed {SEED}"})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def export(model: tt.TiTok, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    c = model.cfg
    g = c.image_size // c.dec["patch"]
    graphs = {
        "encode": (tt.EncodeGraph(model), torch.rand(1, 3, c.image_size, c.image_size), ["images"], ["tokens", "z_q"]),
        "decoder": (tt.DecoderGraph(model), torch.randn(1, c.token_size, 1, c.num_latent_tokens), ["z_q"], ["logits"]),
        "pixel": (tt.PixelGraph(model), torch.randn(1, tt.LEGACY_LOGITS, g, g), ["logits"], ["image"]),
    }
    for name, (mod, example, ins, outs) in graphs.items():
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


def check_ort(model: tt.TiTok, onnx_dir: Path) -> dict:
    import onnxruntime as ort

    def sess(name):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        so.inter_op_num_threads = 1
        return ort.InferenceSession(str(onnx_dir / f"{name}.onnx"), so, providers=["CPUExecutionProvider"])

    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        z_q, tokens = model.encode(x)
        logits = model.decoder(z_q)
        image = model.pixel_stage(logits)
    o_tokens, o_zq = sess("encode").run(None, {"images": x.numpy()})
    (o_logits,) = sess("decoder").run(None, {"z_q": z_q.numpy()})
    (o_image,) = sess("pixel").run(None, {"logits": logits.numpy()})
    save_file(
        {"images": x.contiguous(), "tokens": tokens.contiguous(), "z_q": z_q.contiguous(),
         "logits": logits.contiguous(), "image": image.contiguous()},
        str(onnx_dir.parent / "check.safetensors"),
    )
    return {
        "ort_tokens_identical": bool(np.array_equal(o_tokens, tokens.numpy())),
        "ort_z_q_err": float(np.abs(o_zq - z_q.numpy()).max()),
        "ort_logits_err": float(np.abs(o_logits - logits.numpy()).max()),
        "logits_absmax": float(logits.abs().max()),
        "ort_image_err": float(np.abs(o_image - image.numpy()).max()),
        "image_range": [float(image.min()), float(image.max())],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    wdir, odir = args.work / "s128", args.work / "onnx"
    made = []
    if args.force or not (wdir / "model.safetensors").is_file():
        make_weights(wdir)
        made.append("weights")
    model = tt.load_titok(wdir)
    if args.force or made or not all((odir / f"{n}.onnx").is_file() for n in ("encode", "decoder", "pixel")):
        export(model, odir)
        made.append("onnx")
    report = {"made": made, "params": sum(p.numel() for p in model.parameters())}
    report.update(check_ort(model, odir))
    ok = report["ort_tokens_identical"] and report["ort_image_err"] < 1e-3
    report["ok"] = ok
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
