"""Dev-only: writes crates/marvel-core/tests/fixtures/fid_reference.json, pytorch-fid's Fréchet distances for feature
sets drawn from splitmix64, which `metrics::fid`'s test compares with.

pytorch-fid computes `calculate_frechet_distance(mu1, sigma1, mu2, sigma2)` from `np.mean(axis=0)` and
`np.cov(rowvar=False)` with `scipy.linalg.sqrtm` of the non-symmetric product; marvel takes the symmetric route
(see fid.rs). The cases cover full-rank covariances and rank-deficient ones (fewer vectors than dimensions, where
sqrtm's round-off leaves imaginary parts that pytorch-fid discards). Features: value k of set `seed` is
uniform [0, 1) from splitmix64(seed), scaled per dimension by `1 + (d % 5)` and shifted by `shift`, in float32 as
Inception features are. Both moments are taken in float64 (pytorch-fid averages float32 activations in float32;
marvel keeps float64 throughout, as the issue asks).

    bench/.venv/bin/python bench/python/fid_reference.py
"""
import json
import pathlib

import numpy as np
from pytorch_fid.fid_score import calculate_frechet_distance

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/marvel-core/tests/fixtures/fid_reference.json"
GAMMA = np.uint64(0x9E3779B97F4A7C15)
# (dim, count_a, seed_a, shift_a, count_b, seed_b, shift_b)
CASES = [(16, 200, 1, 0.0, 150, 2, 0.25), (48, 30, 3, 0.0, 40, 4, -0.5), (64, 500, 5, 0.0, 500, 6, 0.0)]


def unit(seed, count):
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + np.arange(1, count + 1, dtype=np.uint64) * GAMMA
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def features(dim, count, seed, shift):
    x = unit(seed, count * dim).reshape(count, dim) * (1 + np.arange(dim) % 5) + shift
    return x.astype(np.float32)


def main():
    cases = []
    for dim, na, sa, ha, nb, sb, hb in CASES:
        a, b = features(dim, na, sa, ha).astype(np.float64), features(dim, nb, sb, hb).astype(np.float64)
        d = calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
        cases.append({"dim": dim, "a": [na, sa, ha], "b": [nb, sb, hb], "fid": float(d)})
        print(dim, na, nb, d)
    OUT.write_text(json.dumps({"reference": "pytorch-fid calculate_frechet_distance (scipy sqrtm)", "cases": cases}, indent=2) + "\n")


if __name__ == "__main__":
    main()
