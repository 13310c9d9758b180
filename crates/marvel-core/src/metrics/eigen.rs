//! Eigen-decomposition of a real symmetric matrix in f64: Householder reduction to tridiagonal form, then the
//! implicit QL iteration with Wilkinson-like shifts (EISPACK `tred2` / `tql2`, in the form of JAMA's
//! `EigenvalueDecomposition`, public domain). The Fréchet distance needs the square root of a covariance matrix
//! and the eigenvalues of a symmetric product; both are symmetric, so this solver is all FID asks for.
//!
//! Storage is column-major (`v[j * n + i]` is row i of column j): every inner loop of both phases runs down a
//! column, so it walks memory contiguously. Cost: about 3n³ flops for the reduction with its accumulated
//! transformations (half without them), plus about 3n³ for QL with vectors (n² without).

use crate::error::Result;
use crate::invalid;

/// `values` ascending; column k of `vectors` (column-major, n x n) is the unit eigenvector of `values[k]`.
#[derive(Debug, Clone)]
pub struct SymmetricEigen {
    pub n: usize,
    pub values: Vec<f64>,
    pub vectors: Vec<f64>,
}

impl SymmetricEigen {
    /// Component i of eigenvector k.
    pub fn vector(&self, k: usize) -> &[f64] {
        &self.vectors[k * self.n..(k + 1) * self.n]
    }
}

/// Full decomposition of the symmetric `n x n` matrix `a` (row- or column-major alike: it is symmetric; only
/// its lower triangle is read).
pub fn symmetric_eigen(a: &[f64], n: usize) -> Result<SymmetricEigen> {
    let (values, vectors) = decompose(a, n, true)?;
    Ok(SymmetricEigen { n, values, vectors })
}

/// Eigenvalues only, ascending: QL skips the rotations of the vectors.
pub fn symmetric_eigenvalues(a: &[f64], n: usize) -> Result<Vec<f64>> {
    Ok(decompose(a, n, false)?.0)
}

fn decompose(a: &[f64], n: usize, want_vectors: bool) -> Result<(Vec<f64>, Vec<f64>)> {
    if n == 0 || a.len() != n * n {
        return Err(invalid!("symmetric eigen: expected a non-empty {n}x{n} matrix, got {} values", a.len()));
    }
    if let Some(bad) = a.iter().position(|v| !v.is_finite()) {
        return Err(invalid!("symmetric eigen: entry {bad} is {} (not finite)", a[bad]));
    }
    // Mirror the lower triangle so that an input that is symmetric only up to rounding is read consistently.
    let mut v = vec![0.0; n * n];
    for j in 0..n {
        for i in j..n {
            let x = a[j * n + i];
            v[j * n + i] = x;
            v[i * n + j] = x;
        }
    }
    let mut d = vec![0.0; n];
    let mut e = vec![0.0; n];
    tred2(&mut v, &mut d, &mut e, n, want_vectors);
    tql2(&mut v, &mut d, &mut e, n, want_vectors)?;
    Ok((d, v))
}

/// Householder tridiagonalisation: on return `d` holds the diagonal, `e[1..]` the sub-diagonal and, when
/// `want_vectors`, `v` the orthogonal transformation (column-major).
fn tred2(v: &mut [f64], d: &mut [f64], e: &mut [f64], n: usize, want_vectors: bool) {
    // `at(i, j)`: row i, column j.
    let at = |i: usize, j: usize| j * n + i;
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
    }
    for i in (1..n).rev() {
        let scale: f64 = d[..i].iter().map(|x| x.abs()).sum();
        let mut h = 0.0;
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
                v[at(j, i)] = 0.0;
            }
        } else {
            for dk in d[..i].iter_mut() {
                *dk /= scale;
                h += *dk * *dk;
            }
            let mut f = d[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            e[..i].iter_mut().for_each(|x| *x = 0.0);
            for j in 0..i {
                f = d[j];
                v[at(j, i)] = f;
                g = e[j] + v[at(j, j)] * f;
                let col = &v[j * n..j * n + i];
                for k in j + 1..i {
                    g += col[k] * d[k];
                    e[k] += col[k] * f;
                }
                e[j] = g;
            }
            f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                let (f, g) = (d[j], e[j]);
                let col = &mut v[j * n..j * n + i];
                for k in j..i {
                    col[k] -= f * e[k] + g * d[k];
                }
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
            }
        }
        d[i] = h;
    }
    if !want_vectors {
        // The reduction leaves the tridiagonal's diagonal on v's diagonal (the accumulation below saves it from
        // there too before overwriting it); skipping the accumulation halves the cost.
        for j in 0..n {
            d[j] = v[at(j, j)];
        }
        e[0] = 0.0;
        return;
    }
    // Accumulate the transformations.
    for i in 0..n - 1 {
        v[at(n - 1, i)] = v[at(i, i)];
        v[at(i, i)] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = v[at(k, i + 1)] / h;
            }
            for j in 0..=i {
                let (next, col) = ((i + 1) * n, j * n);
                let g: f64 = (0..=i).map(|k| v[next + k] * v[col + k]).sum();
                for k in 0..=i {
                    v[col + k] -= g * d[k];
                }
            }
        }
        for k in 0..=i {
            v[at(k, i + 1)] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
        v[at(n - 1, j)] = 0.0;
    }
    v[at(n - 1, n - 1)] = 1.0;
    e[0] = 0.0;
}

/// QL iterations per eigenvalue before giving up; LAPACK allows 30, and convergence is cubic, so a well-formed
/// symmetric matrix takes two or three.
const MAX_ITERATIONS: usize = 60;

/// Implicit QL on the tridiagonal (d, e), accumulating the rotations into `v` when `want_vectors`; sorts the
/// eigenvalues ascending (with their vectors).
fn tql2(v: &mut [f64], d: &mut [f64], e: &mut [f64], n: usize, want_vectors: bool) -> Result<()> {
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1: f64 = 0.0;
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n - 1 && e[m].abs() > eps * tst1 {
            m += 1;
        }
        if m > l {
            let mut iter = 0;
            loop {
                iter += 1;
                if iter > MAX_ITERATIONS {
                    return Err(invalid!("symmetric eigen: QL did not converge for eigenvalue {l} of {n}"));
                }
                let mut g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for di in d[l + 2..].iter_mut() {
                    *di -= h;
                }
                f += h;
                p = d[m];
                let (mut c, mut c2, mut c3) = (1.0, 1.0, 1.0);
                let el1 = e[l + 1];
                let (mut s, mut s2) = (0.0, 0.0);
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    g = c * e[i];
                    h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    if want_vectors {
                        let (left, right) = v.split_at_mut((i + 1) * n);
                        let (vi, vi1) = (&mut left[i * n..], &mut right[..n]);
                        for (a, b) in vi.iter_mut().zip(vi1.iter_mut()) {
                            let t = *b;
                            *b = s * *a + c * t;
                            *a = c * *a - s * t;
                        }
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
    // Selection sort, ascending, swapping whole columns.
    for i in 0..n.saturating_sub(1) {
        let k = (i..n).min_by(|&a, &b| d[a].total_cmp(&d[b])).unwrap_or(i);
        if k != i {
            d.swap(i, k);
            if want_vectors {
                let (left, right) = v.split_at_mut(k * n);
                left[i * n..(i + 1) * n].swap_with_slice(&mut right[..n]);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic symmetric test matrix (column-major) with entries in [-1, 1).
    fn random_symmetric(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = crate::testutil::SplitMix64::new(seed);
        let mut a = vec![0.0; n * n];
        for j in 0..n {
            for i in j..n {
                let x = rng.uniform(-1.0, 1.0);
                a[j * n + i] = x;
                a[i * n + j] = x;
            }
        }
        a
    }

    #[test]
    fn decomposition_reconstructs_the_matrix_with_orthonormal_vectors() {
        for (n, seed) in [(1, 1), (2, 2), (7, 3), (40, 4)] {
            let a = random_symmetric(n, seed);
            let eig = symmetric_eigen(&a, n).unwrap();
            assert!(eig.values.windows(2).all(|w| w[0] <= w[1]), "ascending");
            for k in 0..n {
                let vk = eig.vector(k);
                // A v = λ v
                for i in 0..n {
                    let av: f64 = (0..n).map(|j| a[j * n + i] * vk[j]).sum();
                    assert!((av - eig.values[k] * vk[i]).abs() < 1e-12, "n={n} k={k} i={i}");
                }
                for l in 0..n {
                    let dot: f64 = vk.iter().zip(eig.vector(l)).map(|(x, y)| x * y).sum();
                    let want = if k == l { 1.0 } else { 0.0 };
                    assert!((dot - want).abs() < 1e-12, "n={n} <v{k}, v{l}> = {dot}");
                }
            }
            let values = symmetric_eigenvalues(&a, n).unwrap();
            for (x, y) in values.iter().zip(&eig.values) {
                assert!((x - y).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn known_spectra() {
        // [[2, 1], [1, 2]] has eigenvalues 1 and 3; a diagonal matrix its diagonal, sorted.
        assert_eq!(symmetric_eigenvalues(&[2.0, 1.0, 1.0, 2.0], 2).unwrap().iter().map(|v| v.round()).collect::<Vec<_>>(), [1.0, 3.0]);
        let diag = [5.0, 0.0, 0.0, 0.0, -2.0, 0.0, 0.0, 0.0, 0.5];
        assert_eq!(symmetric_eigenvalues(&diag, 3).unwrap(), [-2.0, 0.5, 5.0]);
        // Rank one: u uᵀ with |u|² = 14 has eigenvalues 0, 0, 14.
        let u = [1.0, 2.0, 3.0];
        let outer: Vec<f64> = (0..9).map(|k| u[k / 3] * u[k % 3]).collect();
        let values = symmetric_eigenvalues(&outer, 3).unwrap();
        assert!(values[0].abs() < 1e-12 && values[1].abs() < 1e-12 && (values[2] - 14.0).abs() < 1e-12, "{values:?}");
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(symmetric_eigen(&[1.0, 2.0, 3.0], 2).is_err());
        assert!(symmetric_eigen(&[], 0).is_err());
        let err = symmetric_eigen(&[1.0, f64::NAN, f64::NAN, 1.0], 2).unwrap_err();
        assert!(err.to_string().contains("not finite"), "{err}");
    }
}
