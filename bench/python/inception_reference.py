"""Dev-only: writes crates/marvel-core/tests/fixtures/inception_reference.json, the pool3 features that
`model::inception`'s test compares its forward pass with.

pytorch-fid's own `InceptionV3([3])` (FIDInceptionA/C/E blocks, resize to 299, inputs scaled to [-1, 1]) is built
unmodified; only the download of `pt_inception-2015-12-05` is replaced by weights drawn from a seed, so no weight
file is needed or kept: the Rust test draws the very same weights from the same seed (see `generated_weights` in
crates/marvel-core/src/model/inception/tests.rs). Every tensor is filled from its own splitmix64 stream seeded
with `SEED ^ fnv1a64(key)`, element by element in row-major order, uniform in a range chosen per kind of tensor
so that activations keep their scale through the 94 layers (He-uniform convolutions, BatchNorm statistics near
the identity).

The fixture also lists every state-dict key and shape, which the Rust test checks its model asks for (the
pt_inception layout, for a strict load of the real file).

    bench/.venv/bin/python bench/python/inception_reference.py
"""
import json
import math
import pathlib

import numpy as np
import torch
import torchvision.models

import pytorch_fid
import pytorch_fid.inception as fid_inception

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/marvel-core/tests/fixtures/inception_reference.json"
SEED = 2015
IMAGE_SEED = 1205
IMAGES, SIDE = 2, 64
GAMMA = np.uint64(0x9E3779B97F4A7C15)


def splitmix64_stream(seed, count):
    """The first `count` outputs of splitmix64 from `seed`: output k mixes seed + (k + 1) * GAMMA."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + (np.arange(1, count + 1, dtype=np.uint64) * GAMMA)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def unit(seed, count):
    """Uniform [0, 1) from the top 53 bits, as `SplitMix64::unit`."""
    return (splitmix64_stream(seed, count) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def fnv1a64(name):
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & ((1 << 64) - 1)
    return h


def value_range(key, shape):
    if key.endswith("conv.weight"):
        bound = math.sqrt(6.0 / math.prod(shape[1:]))
        return -bound, bound
    if key.endswith("bn.weight"):
        return 0.8, 1.2
    if key.endswith("bn.bias") or key.endswith("bn.running_mean"):
        return -0.2, 0.2
    if key.endswith("bn.running_var"):
        return 0.5, 1.5
    if key in ("fc.weight", "fc.bias"):
        bound = 1.0 / math.sqrt(2048)
        return -bound, bound
    raise ValueError(f"no rule for {key}")


def generated(key, shape):
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    lo, hi = value_range(key, shape)
    count = math.prod(shape)
    values = lo + (hi - lo) * unit(SEED ^ fnv1a64(key), count)
    return torch.from_numpy(values.astype(np.float32).reshape(shape))


def skeleton_layout():
    """Key -> shape of the state dict `fid_inception_v3` loads, read from the model it builds (load skipped)."""
    original_url, original_load = fid_inception_v3_hooks()
    fid_inception.load_state_dict_from_url = lambda *a, **k: {}
    torchvision.models.Inception3.load_state_dict = lambda self, *a, **k: None
    try:
        model = fid_inception.fid_inception_v3()
    finally:
        fid_inception.load_state_dict_from_url = original_url
        torchvision.models.Inception3.load_state_dict = original_load
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def fid_inception_v3_hooks():
    return fid_inception.load_state_dict_from_url, torchvision.models.Inception3.load_state_dict


def main():
    torch.set_num_threads(2)
    layout = skeleton_layout()
    weights = {k: generated(k, s) for k, s in layout.items()}
    fid_inception.load_state_dict_from_url = lambda *a, **k: weights
    model = fid_inception.InceptionV3([fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()

    pixels = (splitmix64_stream(IMAGE_SEED, IMAGES * SIDE * SIDE * 3) >> np.uint64(56)).astype(np.uint8)
    images = torch.from_numpy(pixels.reshape(IMAGES, SIDE, SIDE, 3)).permute(0, 3, 1, 2)
    # As pytorch-fid's ImagePathDataset: ToTensor divides uint8 by 255.
    with torch.no_grad():
        features = model(images.to(torch.float32).div(255))[0].squeeze(-1).squeeze(-1)
    print("features", tuple(features.shape), "mean", features.mean().item(), "std", features.std().item(), "max", features.max().item())
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "reference": f"pytorch-fid {pytorch_fid.__version__} InceptionV3([3]) on torch {torch.__version__}, seeded weights",
                "seed": SEED,
                "image_seed": IMAGE_SEED,
                "images": IMAGES,
                "side": SIDE,
                "layout": layout,
                "features": [[float(v) for v in row] for row in features.tolist()],
            }
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
