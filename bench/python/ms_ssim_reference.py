"""Dev-only: writes crates/marvel-core/tests/fixtures/ms_ssim_reference.json, the MS-SSIM reference values that
`metrics::ms_ssim`'s test compares with.

The reference is pytorch-msssim 1.0's `ms_ssim(X, Y, data_range=255, size_average=False)` (MIT licence, Gongfan
Fang), transcribed below operation for operation (`_fspecial_gauss_1d`, `gaussian_filter`, `_ssim`, `ms_ssim`) and
run in float64 so the comparison is not limited by float32. The image pairs are drawn from splitmix64 with integer
arithmetic only, exactly as the Rust test draws them (`pair` in ms_ssim.rs).

    bench/.venv/bin/python bench/python/ms_ssim_reference.py
"""
import json
import pathlib

import torch
import torch.nn.functional as F

MASK64 = (1 << 64) - 1
OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/marvel-core/tests/fixtures/ms_ssim_reference.json"
# (height, width, noise, seed): a 256x256 pair as the evaluation uses, one with odd sides (padding in the pools),
# one near the smallest size allowed (161), and one heavily perturbed.
CASES = [(256, 256, 20, 1), (177, 203, 8, 2), (161, 161, 40, 3), (192, 224, 90, 4)]


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & MASK64

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)


def pair(h, w, noise, seed):
    rng = SplitMix64(seed)
    a = torch.zeros(h, w, 3, dtype=torch.float64)
    b = torch.zeros(h, w, 3, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            for c in range(3):
                v = ((x * 7 + y * 3) // 2 + c * 60 + ((x // 16 + y // 16) % 2) * 50) % 256
                n = rng.next_u64() % (2 * noise + 1) - noise
                a[y, x, c] = v
                b[y, x, c] = min(max(v + n, 0), 255)
    return a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None]


# --- pytorch-msssim 1.0 (ssim.py), float64 ---
def _fspecial_gauss_1d(size, sigma):
    coords = torch.arange(size, dtype=torch.float64)
    coords -= size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g /= g.sum()
    return g.unsqueeze(0).unsqueeze(0)


def gaussian_filter(input, win):
    C = input.shape[1]
    out = input
    for i, s in enumerate(input.shape[2:]):
        if s >= win.shape[-1]:
            out = F.conv2d(out, weight=win.transpose(2 + i, -1), stride=1, padding=0, groups=C)
    return out


def _ssim(X, Y, data_range, win, K=(0.01, 0.03)):
    K1, K2 = K
    compensation = 1.0
    C1 = (K1 * data_range) ** 2
    C2 = (K2 * data_range) ** 2
    mu1 = gaussian_filter(X, win)
    mu2 = gaussian_filter(Y, win)
    mu1_sq = mu1.pow(2)
    mu2_sq = mu2.pow(2)
    mu1_mu2 = mu1 * mu2
    sigma1_sq = compensation * (gaussian_filter(X * X, win) - mu1_sq)
    sigma2_sq = compensation * (gaussian_filter(Y * Y, win) - mu2_sq)
    sigma12 = compensation * (gaussian_filter(X * Y, win) - mu1_mu2)
    cs_map = (2 * sigma12 + C2) / (sigma1_sq + sigma2_sq + C2)
    ssim_map = ((2 * mu1_mu2 + C1) / (mu1_sq + mu2_sq + C1)) * cs_map
    return torch.flatten(ssim_map, 2).mean(-1), torch.flatten(cs_map, 2).mean(-1)


def ms_ssim(X, Y, data_range=255, win_size=11, win_sigma=1.5):
    win = _fspecial_gauss_1d(win_size, win_sigma).repeat([X.shape[1]] + [1] * (len(X.shape) - 1))
    assert min(X.shape[-2:]) > (win_size - 1) * (2**4)
    weights = torch.tensor([0.0448, 0.2856, 0.3001, 0.2363, 0.1333], dtype=torch.float64)
    levels = weights.shape[0]
    mcs = []
    for i in range(levels):
        ssim_per_channel, cs = _ssim(X, Y, win=win, data_range=data_range)
        if i < levels - 1:
            mcs.append(torch.relu(cs))
            padding = [s % 2 for s in X.shape[2:]]
            X = F.avg_pool2d(X, kernel_size=2, padding=padding)
            Y = F.avg_pool2d(Y, kernel_size=2, padding=padding)
    ssim_per_channel = torch.relu(ssim_per_channel)
    mcs_and_ssim = torch.stack(mcs + [ssim_per_channel], dim=0)
    ms_ssim_val = torch.prod(mcs_and_ssim ** weights.view(-1, 1, 1), dim=0)
    return ms_ssim_val.mean(1)


def main():
    cases = []
    for h, w, noise, seed in CASES:
        a, b = pair(h, w, noise, seed)
        value = ms_ssim(a, b).item()
        cases.append({"height": h, "width": w, "noise": noise, "seed": seed, "ms_ssim": value})
        print(f"{h}x{w} noise {noise}: {value:.12f}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"reference": "pytorch-msssim 1.0 ms_ssim(data_range=255), float64", "cases": cases}, indent=2) + "\n")


if __name__ == "__main__":
    main()
