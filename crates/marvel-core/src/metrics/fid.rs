//! Fréchet Inception Distance (Heusel et al. 2017) as pytorch-fid computes it: each set of features is summarised by
//! its mean and its sample covariance (`np.cov(rowvar=False)`, divisor N − 1) in float64, and the distance between
//! the two Gaussians is
//!
//! `d² = |μ₁ − μ₂|² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁ Σ₂)^½`.
//!
//! pytorch-fid takes `scipy.linalg.sqrtm(Σ₁ Σ₂)` of the non-symmetric product. Its trace equals that of the
//! symmetric `(Σ₁^½ Σ₂ Σ₁^½)^½` (the two products are similar matrices, so they share their eigenvalues λᵢ ≥ 0),
//! which is `Σᵢ √λᵢ` by a symmetric eigen-solver: no complex arithmetic, and round-off that makes an eigenvalue
//! slightly negative (rank-deficient covariances, fewer images than feature dimensions) is clamped to zero
//! instead of turning into the imaginary parts pytorch-fid has to discard.

use candle_core::{DType, Device, Tensor};

use super::eigen::{symmetric_eigen, symmetric_eigenvalues};
use crate::error::Result;
use crate::{invalid, shape_mismatch};

/// Feature vectors per block of the covariance product.
const COV_BLOCK_ROWS: usize = 1024;

/// Mean and covariance of a set of feature vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStats {
    pub dim: usize,
    /// Vectors summarised.
    pub count: usize,
    pub mean: Vec<f64>,
    /// `dim x dim`, symmetric (so row- and column-major alike).
    pub cov: Vec<f64>,
}

impl FeatureStats {
    /// Statistics of `count` feature vectors of `dim` values each, stored one after the other.
    pub fn from_features(features: &[f32], count: usize, dim: usize) -> Result<Self> {
        if dim == 0 {
            return Err(invalid!("FID statistics: the feature dimension must be at least 1"));
        }
        if count < 2 {
            return Err(invalid!("FID statistics need at least 2 images (the covariance divides by N - 1), got {count}"));
        }
        if features.len() != count * dim {
            return Err(shape_mismatch!(
                "FID statistics: {count} vectors of {dim} features need {} values, got {}",
                count * dim,
                features.len()
            ));
        }
        if let Some(i) = features.iter().position(|v| !v.is_finite()) {
            return Err(invalid!("FID statistics: feature {} of vector {} is {}", i % dim, i / dim, features[i]));
        }
        let mut mean = vec![0.0; dim];
        for row in features.chunks_exact(dim) {
            mean.iter_mut().zip(row).for_each(|(m, &x)| *m += x as f64);
        }
        mean.iter_mut().for_each(|m| *m /= count as f64);
        // Σ = CᵀC / (N − 1) over the centred vectors C, by gemm in blocks of rows so that memory stays at one
        // block of f64 (the features themselves may be a few hundred megabytes).
        let mut cov = Tensor::zeros((dim, dim), DType::F64, &Device::Cpu)?;
        for block in features.chunks(COV_BLOCK_ROWS * dim) {
            let rows = block.len() / dim;
            let centred: Vec<f64> = block.chunks_exact(dim).flat_map(|row| row.iter().zip(&mean).map(|(&x, m)| x as f64 - m)).collect();
            let c = Tensor::from_vec(centred, (rows, dim), &Device::Cpu)?;
            cov = (cov + c.t()?.matmul(&c)?)?;
        }
        let cov = (cov / (count - 1) as f64)?.flatten_all()?.to_vec1::<f64>()?;
        Ok(FeatureStats { dim, count, mean, cov })
    }

    /// Statistics given directly (a reference set's precomputed `mu` and `sigma`).
    pub fn from_moments(mean: Vec<f64>, cov: Vec<f64>, count: usize) -> Result<Self> {
        let dim = mean.len();
        if dim == 0 || cov.len() != dim * dim {
            return Err(shape_mismatch!("FID statistics: a mean of {dim} needs a {dim}x{dim} covariance, got {} values", cov.len()));
        }
        if mean.iter().chain(&cov).any(|v| !v.is_finite()) {
            return Err(invalid!("FID statistics: the mean and covariance must be finite"));
        }
        Ok(FeatureStats { dim, count, mean, cov })
    }
}

/// `a · b` of two `n x n` row-major matrices, by candle's f64 gemm (blocked and parallel: for n = 2048 about ten
/// times a row-parallel triple loop).
fn matmul(a: &[f64], b: &[f64], n: usize) -> Result<Vec<f64>> {
    let t = |m: &[f64]| Tensor::from_slice(m, (n, n), &Device::Cpu);
    Ok(t(a)?.matmul(&t(b)?)?.flatten_all()?.to_vec1::<f64>()?)
}

/// The eigenvalues of an n x n symmetric PSD matrix that are below the solver's error bound, `n · ε · λ_max`
/// (numpy's `matrix_rank` tolerance), set to zero. A square root magnifies them: round-off of 1e-14 would
/// become 1e-7 per null direction, and with fewer images than features there are hundreds of those.
fn clamp_null_space(values: &mut [f64]) {
    let max = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let tol = values.len() as f64 * f64::EPSILON * max;
    values.iter_mut().filter(|v| **v < tol).for_each(|v| *v = 0.0);
}

/// The symmetric square root of a symmetric positive semi-definite matrix: `V diag(√λ) Vᵀ`, eigenvalues below
/// round-off taken as zero.
pub fn sqrtm_psd(a: &[f64], n: usize) -> Result<Vec<f64>> {
    let mut eig = symmetric_eigen(a, n)?;
    clamp_null_space(&mut eig.values);
    // Scale column k of V by λ_k^¼ so that (V D^¼)(V D^¼)ᵀ = V D^½ Vᵀ: one product instead of two.
    let mut scaled = eig.vectors.clone();
    for (k, &l) in eig.values.iter().enumerate() {
        let s = l.sqrt().sqrt();
        scaled[k * n..(k + 1) * n].iter_mut().for_each(|x| *x *= s);
    }
    // Read row-major, the column-major `scaled` is (V D^¼)ᵀ =: W, and the root is Wᵀ W.
    let w = Tensor::from_vec(scaled, (n, n), &Device::Cpu)?;
    Ok(w.t()?.matmul(&w)?.flatten_all()?.to_vec1::<f64>()?)
}

/// `tr (Σ₁ Σ₂)^½` as `Σ √λ` over the eigenvalues of `Σ₁^½ Σ₂ Σ₁^½`.
pub fn trace_sqrt_product(s1: &[f64], s2: &[f64], n: usize) -> Result<f64> {
    trace_sqrt_with_root(&sqrtm_psd(s1, n)?, s2, n)
}

/// [`trace_sqrt_product`] given `Σ₁^½`.
fn trace_sqrt_with_root(root: &[f64], s2: &[f64], n: usize) -> Result<f64> {
    let mut m = matmul(&matmul(root, s2, n)?, root, n)?;
    // Symmetrise what rounding left unsymmetric.
    for i in 0..n {
        for j in 0..i {
            let avg = 0.5 * (m[i * n + j] + m[j * n + i]);
            m[i * n + j] = avg;
            m[j * n + i] = avg;
        }
    }
    let mut values = symmetric_eigenvalues(&m, n)?;
    clamp_null_space(&mut values);
    Ok(values.iter().map(|l| l.sqrt()).sum())
}

/// The Fréchet distance between the Gaussians of two feature sets (the FID when the features are Inception pool3).
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<f64> {
    FrechetReference::new(a.clone())?.distance(b)
}

/// One set's statistics with the square root of its covariance computed once, for distances from it to several
/// sets (an evaluation compares the originals with the reconstructions of every depth): the root is the one full
/// eigen-decomposition, so each further distance costs half as much.
#[derive(Debug, Clone)]
pub struct FrechetReference {
    stats: FeatureStats,
    root: Vec<f64>,
}

impl FrechetReference {
    pub fn new(stats: FeatureStats) -> Result<Self> {
        let root = sqrtm_psd(&stats.cov, stats.dim)?;
        Ok(FrechetReference { stats, root })
    }

    /// The Fréchet distance from the reference set to `b`.
    pub fn distance(&self, b: &FeatureStats) -> Result<f64> {
        let a = &self.stats;
        if a.dim != b.dim {
            return Err(shape_mismatch!("FID: features of dimension {} and {} cannot be compared", a.dim, b.dim));
        }
        let n = a.dim;
        let mean_term: f64 = a.mean.iter().zip(&b.mean).map(|(x, y)| (x - y) * (x - y)).sum();
        let trace = |s: &[f64]| (0..n).map(|i| s[i * n + i]).sum::<f64>();
        let cross = trace_sqrt_with_root(&self.root, &b.cov, n)?;
        Ok(mean_term + trace(&a.cov) + trace(&b.cov) - 2.0 * cross)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::SplitMix64;

    /// `count` samples of `mean + L z`, z standard normal (Box–Muller on splitmix64), `l` row-major lower factor.
    fn gaussian_samples(mean: &[f64], l: &[f64], count: usize, seed: u64) -> Vec<f32> {
        let n = mean.len();
        let mut rng = SplitMix64::new(seed);
        let mut normal = || {
            let (u1, u2) = (1.0 - rng.unit(), rng.unit());
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        };
        let mut out = Vec::with_capacity(count * n);
        for _ in 0..count {
            let z: Vec<f64> = (0..n).map(|_| normal()).collect();
            for i in 0..n {
                out.push((mean[i] + (0..n).map(|k| l[i * n + k] * z[k]).sum::<f64>()) as f32);
            }
        }
        out
    }

    fn features(count: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..count * dim).map(|_| rng.uniform(-2.0, 3.0) as f32).collect()
    }

    #[test]
    fn a_set_against_itself_is_zero() {
        // Full-rank (200 vectors of 16) and rank-deficient (10 vectors of 32, as with fewer images than features).
        for (count, dim) in [(200, 16), (10, 32)] {
            let s = FeatureStats::from_features(&features(count, dim, 7), count, dim).unwrap();
            let d = frechet_distance(&s, &s).unwrap();
            assert!(d.abs() < 1e-6, "{count}x{dim}: {d}");
        }
    }

    #[test]
    fn statistics_are_numpy_mean_and_cov() {
        // Three 2-d vectors by hand: mean (2, 1); np.cov(rowvar=False) = [[1, -1], [-1, 1]].
        let s = FeatureStats::from_features(&[1.0, 2.0, 2.0, 1.0, 3.0, 0.0], 3, 2).unwrap();
        assert_eq!(s.mean, [2.0, 1.0]);
        assert_eq!(s.cov, [1.0, -1.0, -1.0, 1.0]);
    }

    /// tr √M of a 2x2 matrix with non-negative real eigenvalues: √(tr M + 2 √det M) (square both sides).
    fn trace_sqrt_2x2(m: [f64; 4]) -> f64 {
        let det = m[0] * m[3] - m[1] * m[2];
        (m[0] + m[3] + 2.0 * det.sqrt()).sqrt()
    }

    #[test]
    fn two_gaussians_match_the_closed_form() {
        // Non-commuting covariances, so (Σ₁Σ₂)^½ is not Σ₁^½Σ₂^½ and the symmetric form is really exercised.
        let (m1, m2) = (vec![0.5, -1.0], vec![2.0, 0.25]);
        let s1 = vec![2.0, 0.6, 0.6, 1.0];
        let s2 = vec![0.5, -0.3, -0.3, 1.5];
        let p = [s1[0] * s2[0] + s1[1] * s2[2], s1[0] * s2[1] + s1[1] * s2[3], s1[2] * s2[0] + s1[3] * s2[2], s1[2] * s2[1] + s1[3] * s2[3]];
        let closed = (1.5f64.powi(2) + 1.25f64.powi(2)) + 3.0 + 2.0 - 2.0 * trace_sqrt_2x2(p);
        let a = FeatureStats::from_moments(m1.clone(), s1.clone(), 0).unwrap();
        let b = FeatureStats::from_moments(m2.clone(), s2.clone(), 0).unwrap();
        let d = frechet_distance(&a, &b).unwrap();
        assert!((d - closed).abs() < 1e-10, "{d} vs {closed}");
        assert!((frechet_distance(&b, &a).unwrap() - closed).abs() < 1e-10, "symmetric in its arguments");

        // Sampled sets: their distance tends to the closed form (50k samples: sampling error well under 0.05).
        let chol = |s: &[f64]| {
            let l00 = s[0].sqrt();
            let l10 = s[2] / l00;
            vec![l00, 0.0, l10, (s[3] - l10 * l10).sqrt()]
        };
        let count = 50_000;
        let x = FeatureStats::from_features(&gaussian_samples(&m1, &chol(&s1), count, 1), count, 2).unwrap();
        let y = FeatureStats::from_features(&gaussian_samples(&m2, &chol(&s2), count, 2), count, 2).unwrap();
        let sampled = frechet_distance(&x, &y).unwrap();
        assert!((sampled - closed).abs() < 0.05, "{sampled} vs {closed}");
    }

    #[test]
    fn commuting_covariances_in_higher_dimension() {
        // Σ₁ = Q diag(a) Qᵀ, Σ₂ = Q diag(b) Qᵀ: tr (Σ₁Σ₂)^½ = Σ √(aᵢbᵢ). Q from the eigenvectors of a random matrix.
        let n = 24;
        let mut rng = SplitMix64::new(3);
        let r: Vec<f64> = {
            let mut m = vec![0.0; n * n];
            for i in 0..n {
                for j in 0..=i {
                    let v = rng.uniform(-1.0, 1.0);
                    m[i * n + j] = v;
                    m[j * n + i] = v;
                }
            }
            m
        };
        let q = symmetric_eigen(&r, n).unwrap();
        let a: Vec<f64> = (0..n).map(|_| rng.uniform(0.0, 4.0)).collect();
        let b: Vec<f64> = (0..n).map(|_| rng.uniform(0.0, 4.0)).collect();
        let build = |d: &[f64]| {
            let mut s = vec![0.0; n * n];
            for i in 0..n {
                for j in 0..n {
                    s[i * n + j] = (0..n).map(|k| q.vector(k)[i] * d[k] * q.vector(k)[j]).sum();
                }
            }
            s
        };
        let expected: f64 = a.iter().zip(&b).map(|(x, y)| (x * y).sqrt()).sum();
        let got = trace_sqrt_product(&build(&a), &build(&b), n).unwrap();
        assert!((got - expected).abs() < 1e-9, "{got} vs {expected}");
    }

    /// pytorch-fid's `calculate_frechet_distance` (scipy's `sqrtm` of the non-symmetric product) on the same
    /// splitmix64 feature sets, written by `bench/python/fid_reference.py`: full-rank and rank-deficient cases.
    /// Agreement: 1e-14 relative at full rank; 1e-8 in the rank-deficient case, where sqrtm of a singular product
    /// is itself only that accurate.
    #[test]
    fn matches_pytorch_fid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fid_reference.json");
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let set = |dim: usize, spec: &serde_json::Value| {
            let (count, seed, shift) = (spec[0].as_u64().unwrap() as usize, spec[1].as_u64().unwrap(), spec[2].as_f64().unwrap());
            let mut rng = SplitMix64::new(seed);
            let f: Vec<f32> = (0..count * dim).map(|k| (rng.unit() * (1 + (k % dim) % 5) as f64 + shift) as f32).collect();
            FeatureStats::from_features(&f, count, dim).unwrap()
        };
        for case in v["cases"].as_array().unwrap() {
            let dim = case["dim"].as_u64().unwrap() as usize;
            let expected = case["fid"].as_f64().unwrap();
            let got = frechet_distance(&set(dim, &case["a"]), &set(dim, &case["b"])).unwrap();
            assert!((got - expected).abs() < 1e-6 * expected.max(1.0), "dim {dim}: {got} vs pytorch-fid {expected}");
        }
    }

    #[test]
    fn bad_inputs_name_the_problem() {
        let err = FeatureStats::from_features(&[1.0, 2.0], 1, 2).unwrap_err();
        assert!(err.to_string().contains("at least 2 images"), "{err}");
        let err = FeatureStats::from_features(&[1.0, 2.0, 3.0], 2, 2).unwrap_err();
        assert_eq!(err.code(), "MARVEL_SHAPE_MISMATCH");
        let err = FeatureStats::from_features(&[1.0, f32::NAN, 3.0, 4.0], 2, 2).unwrap_err();
        assert!(err.to_string().contains("feature 1 of vector 0"), "{err}");
        let a = FeatureStats::from_features(&features(4, 3, 1), 4, 3).unwrap();
        let b = FeatureStats::from_features(&features(4, 2, 1), 4, 2).unwrap();
        assert_eq!(frechet_distance(&a, &b).unwrap_err().code(), "MARVEL_SHAPE_MISMATCH");
    }
}
