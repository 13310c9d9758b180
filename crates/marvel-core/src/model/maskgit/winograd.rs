//! 3x3 stride-1 "same" convolution on the CPU by Winograd's F(2x2, 3x3) (Lavin & Gray 2015, "Fast Algorithms
//! for Convolutional Neural Networks"): each 2x2 block of outputs comes from a 4x4 input tile with 16
//! multiplies per (input, output) channel pair instead of 36, so the gemms, nearly all of the VQGAN
//! decoder's time, shrink 2.25x.
//!
//! U[co][ξ][ci] = (G g G^T)[ξ] (weights, transformed once), V[ci][ξ][tile] = (B^T d B)[ξ] (input tiles), one
//! gemm per transform position ξ, M[ξ] = U[ξ] V[ξ] (c_out x tiles), then Y = A^T m A per tile. The work runs
//! over bands of tile rows so V and M stay a few MB; a nearest x2 upsampling of the input is folded into the
//! tile reads. The transforms only add, subtract and halve, so the result stays within a few ulps of a
//! direct convolution's. Every inner loop runs over contiguous rows of tiles so that it vectorises.

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Storage, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::nn::kernels;
use crate::nn::scratch;

/// Target size (in f32 values) of one band's transformed input V: 1 MB, one core's L2 on the 2-core AMD EPYC
/// (Zen 4) of the benchmarks, where each thread runs whole bands. Against 4 MB it cut the released decoder's CPU
/// time by 8-10% (5 alternating pairs, 1.57-1.69 vs 1.78-1.87 CPU-s per image, under a load of 5); 0.25 and 0.5 MB
/// no better.
pub(super) const BAND_VALUES: usize = 1 << 18;

/// U for a `[c_out, c_in, 3, 3]` weight, as a (c_out, 16, c_in) tensor, with
/// G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]].
pub(super) fn transform_weights(weight: &Tensor) -> candle_core::Result<Tensor> {
    let (c_out, c_in, _, _) = weight.dims4()?;
    let g = weight.flatten_all()?.to_vec1::<f32>()?;
    let mut u = vec![0f32; c_out * 16 * c_in];
    let g3 = |a: f32, b: f32, c: f32| [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
    u.par_chunks_mut(16 * c_in).zip(g.par_chunks(9 * c_in)).for_each(|(u_co, g_co)| {
        for (ci, k) in g_co.chunks_exact(9).enumerate() {
            // G g: G's rows combine the kernel's rows (per column); then G's rows combine across columns.
            let cols: [[f32; 4]; 3] = std::array::from_fn(|x| g3(k[x], k[3 + x], k[6 + x]));
            for i in 0..4 {
                let row = g3(cols[0][i], cols[1][i], cols[2][i]);
                for (j, val) in row.into_iter().enumerate() {
                    u_co[(i * 4 + j) * c_in + ci] = val;
                }
            }
        }
    });
    Tensor::from_vec(u, (c_out, 16, c_in), &Device::Cpu)
}

pub(super) struct Winograd3x3<'a> {
    /// From [`transform_weights`].
    pub u: &'a Tensor,
    pub bias: Option<Vec<f32>>,
    pub upsample: bool,
    pub band_values: usize,
}

impl<'a> Winograd3x3<'a> {
    pub fn new(u: &'a Tensor, bias: Option<Vec<f32>>, upsample: bool) -> Self {
        Self { u, bias, upsample, band_values: BAND_VALUES }
    }
}

impl CustomOp1 for Winograd3x3<'_> {
    fn name(&self) -> &'static str {
        "conv3x3-winograd"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = crate::nn::ops::values(storage, layout, "conv3x3-winograd")?;
        let (batch, c_in, h, w) = layout.shape().dims4()?;
        let (c_out, _, _) = self.u.dims3()?;
        let (u_guard, u_layout) = self.u.storage_and_layout();
        let Storage::Cpu(u) = &*u_guard else { candle_core::bail!("conv3x3-winograd: weights not on the CPU") };
        let Some((u_start, u_end)) = u_layout.contiguous_offsets() else {
            candle_core::bail!("conv3x3-winograd: transformed weights not contiguous")
        };
        let conv = Conv3x3 {
            u: &u.as_slice::<f32>()?[u_start..u_end],
            c_out,
            c_in,
            bias: self.bias.as_deref(),
            upsample: self.upsample,
            band_values: self.band_values,
        };
        let up = if self.upsample { 2 } else { 1 };
        let mut out = vec![0f32; batch * c_out * h * up * w * up];
        conv.run(x, batch, h, w, None, &mut out);
        Ok((CpuStorage::F32(out), Shape::from((batch, c_out, h * up, w * up))))
    }
}

/// One convolution's arguments, on plain slices: what [`Winograd3x3`] runs, and what the decoder's inference
/// pass calls directly on buffers it reuses from layer to layer.
pub(super) struct Conv3x3<'a> {
    /// From [`transform_weights`]: (c_out, 16, c_in).
    pub u: &'a [f32],
    pub c_out: usize,
    pub c_in: usize,
    pub bias: Option<&'a [f32]>,
    pub upsample: bool,
    pub band_values: usize,
}

/// A pointer to the output that the bands write in disjoint parts from several threads.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every band writes only the output rows of its own tile rows (see `Conv3x3::band`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Through a method, so that closures capture the Send + Sync wrapper rather than its raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

impl Conv3x3<'_> {
    /// `out` (batch, c_out, oh, ow) <- conv(x) (+ `residual`, same shape as `out`) for `x` (batch, c_in, h, w).
    ///
    /// The unit of work is one band of tile rows of one image: its input transform, 16 products and output
    /// transform. When there are enough bands, each thread runs whole bands with its own buffers and nothing is
    /// synchronised within a band; otherwise (the small deep layers) the threads share each band's steps.
    pub fn run(&self, x: &[f32], batch: usize, h: usize, w: usize, residual: Option<&[f32]>, out: &mut [f32]) {
        let up = if self.upsample { 2 } else { 1 };
        let (oh, ow) = (h * up, w * up);
        let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
        assert!(x.len() == batch * self.c_in * h * w, "conv3x3: input size");
        assert!(out.len() == batch * self.c_out * oh * ow, "conv3x3: output size");
        assert!(residual.is_none_or(|r| r.len() == out.len()), "conv3x3: residual size");
        assert!(self.u.len() == 16 * self.c_out * self.c_in, "conv3x3: weight size");
        if out.is_empty() {
            return;
        }
        let band_rows = (self.band_values / (16 * self.c_in * tw)).clamp(1, th);
        let bands = th.div_ceil(band_rows);
        let (v_len, m_len) = (16 * self.c_in * band_rows * tw, 16 * self.c_out * band_rows * tw);
        let out = OutPtr(out.as_mut_ptr());
        let threads = rayon::current_num_threads();
        let units = batch * bands;
        // Two bands per thread at least, so that a thread slowed by other work leaves some to the others.
        if threads > 1 && units >= 2 * threads {
            (0..units).into_par_iter().for_each_init(
                || (scratch(v_len), scratch(m_len)),
                |(v, m), unit| {
                    self.band(x, (h, w), residual, out, unit / bands, (unit % bands) * band_rows, band_rows, v, m, 1)
                },
            );
        } else {
            let (mut v, mut m) = (scratch(v_len), scratch(m_len));
            for unit in 0..units {
                self.band(
                    x,
                    (h, w),
                    residual,
                    out,
                    unit / bands,
                    (unit % bands) * band_rows,
                    band_rows,
                    &mut v,
                    &mut m,
                    threads,
                );
            }
        }
    }

    /// Output rows 2 ty0 .. 2 (ty0 + rows) of image b, each step split over `threads` threads.
    #[allow(clippy::too_many_arguments)]
    fn band(
        &self,
        x: &[f32],
        (h, w): (usize, usize),
        residual: Option<&[f32]>,
        out: OutPtr,
        b: usize,
        ty0: usize,
        band_rows: usize,
        v: &mut [f32],
        m: &mut [f32],
        threads: usize,
    ) {
        let (c_in, c_out) = (self.c_in, self.c_out);
        let up = if self.upsample { 2 } else { 1 };
        let (oh, ow) = (h * up, w * up);
        let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
        let rows = band_rows.min(th - ty0);
        let t = rows * tw;
        let src = Source { x: &x[b * c_in * h * w..(b + 1) * c_in * h * w], h, w, up };
        // Shorter for the last band.
        let v = &mut v[..c_in * 16 * t];
        if threads > 1 {
            v.par_chunks_mut(16 * t).enumerate().for_each(|(c, v_c)| transform_tiles(&src, c, ty0, rows, v_c));
        } else {
            v.chunks_mut(16 * t).enumerate().for_each(|(c, v_c)| transform_tiles(&src, c, ty0, rows, v_c));
        }
        let m = &mut m[..16 * c_out * t];
        products(self.u, v, m, c_out, c_in, t, threads);
        let m = &*m;
        let (y0, y1) = (2 * ty0, (2 * (ty0 + rows)).min(oh));
        let plane = oh * ow;
        let inverse = |co: usize, scratch: &mut Vec<f32>| {
            let bias = self.bias.map_or(0.0, |b| b[co]);
            let at = (b * c_out + co) * plane + y0 * ow;
            // SAFETY: `run` asserted out's size; rows y0..y1 of plane (b, co) belong to this band alone, and each
            // co is visited once.
            let y = unsafe { std::slice::from_raw_parts_mut(out.get().add(at), (y1 - y0) * ow) };
            for r in 0..rows {
                let m_row: [&[f32]; 16] = std::array::from_fn(|xi| &m[(xi * c_out + co) * t + r * tw..][..tw]);
                let (top, rest) = y[2 * r * ow..].split_at_mut(ow);
                let bottom = if y0 + 2 * r + 1 < oh { Some(&mut rest[..ow]) } else { None };
                inverse_transform_row(&m_row, bias, top, bottom, scratch);
            }
            if let Some(res) = residual {
                add_assign(y, &res[at..at + y.len()]);
            }
        };
        if threads > 1 {
            (0..c_out).into_par_iter().for_each_init(|| vec![0f32; 4 * tw], |s, co| inverse(co, s));
        } else {
            let mut s = vec![0f32; 4 * tw];
            (0..c_out).for_each(|co| inverse(co, &mut s));
        }
    }
}

/// M[ξ] = U[ξ] V[ξ] for the 16 transform positions ξ: U[ξ] the (c_out, c_in) matrix at offset ξ·c_in with row
/// stride 16·c_in, V[ξ] the (c_in, t) matrix at ξ·t with row stride 16·t, M[ξ] (c_out, t) contiguous at ξ·c_out·t.
/// The same `gemm` calls candle's batched matmul makes (so the same bits, on any number of threads), each split
/// over `threads` threads of the current pool.
fn products(u: &[f32], v: &[f32], m: &mut [f32], c_out: usize, c_in: usize, t: usize, threads: usize) {
    assert!(u.len() == 16 * c_out * c_in && v.len() == 16 * c_in * t && m.len() == 16 * c_out * t, "products: sizes");
    let parallelism = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    for xi in 0..16 {
        // SAFETY: with the sizes asserted above, U[ξ]'s last element is at ξ·c_in + (c_out - 1)·16·c_in + c_in - 1,
        // V[ξ]'s at ξ·t + (c_in - 1)·16·t + t - 1 and M[ξ]'s at (ξ + 1)·c_out·t - 1, all inside their slices; m is
        // borrowed mutably and u, v shared, so nothing else touches M[ξ].
        unsafe {
            gemm::gemm(
                c_out,
                t,
                c_in,
                m.as_mut_ptr().add(xi * c_out * t),
                1,
                t as isize,
                false,
                u.as_ptr().add(xi * c_in),
                1,
                (16 * c_in) as isize,
                v.as_ptr().add(xi * t),
                1,
                (16 * t) as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
    }
}

kernels::dispatch! {
    /// dst += src: the residual added onto a convolution's output, the same single rounding as a separate add.
    fn add_assign(dst: &mut [f32], src: &[f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d += s;
        }
    }
}

/// One image's input planes as the conv sees them (optionally upsampled x2).
struct Source<'a> {
    x: &'a [f32],
    h: usize,
    w: usize,
    up: usize,
}

kernels::dispatch! {
    /// V[ξ][tile] (into `v`, `16 x rows * tw`) = (B^T d B)[ξ] for the tiles of tile rows ty0 .. ty0 + rows of
    /// input channel c, with B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]] and d the 4x4
    /// patch whose top-left is (2 ty - 1, 2 tx - 1), zero outside the image.
    fn transform_tiles(src: &Source, c: usize, ty0: usize, rows: usize, v: &mut [f32]) {
        let (oh, ow) = (src.h * src.up, src.w * src.up);
        let tw = ow.div_ceil(2);
        let t = rows * tw;
        let n = tw + 1;
        let plane = &src.x[c * src.h * src.w..(c + 1) * src.h * src.w];
        // Patch rows k = 0..3 split into even[k][j] = column 2j - 1 and odd[k][j] = column 2j, so that tile tx
        // reads columns even[tx], odd[tx], even[tx + 1], odd[tx + 1]: all contiguous runs over tx.
        let mut cols = vec![0f32; 8 * n];
        let mut combos = vec![0f32; 8 * n];
        for r in 0..rows {
            let ty = ty0 + r;
            cols.fill(0.0);
            let (even, odd) = cols.split_at_mut(4 * n);
            for k in 0..4 {
                let yy = (2 * ty + k) as isize - 1;
                if yy < 0 || yy as usize >= oh {
                    continue;
                }
                let row = &plane[(yy as usize / src.up) * src.w..][..src.w];
                let (e, o) = (&mut even[k * n..(k + 1) * n], &mut odd[k * n..(k + 1) * n]);
                if src.up == 1 {
                    let pairs = row.chunks_exact(2);
                    if let [last] = pairs.remainder() {
                        o[src.w / 2] = *last;
                    }
                    for ((pair, o), e) in pairs.zip(o.iter_mut()).zip(e[1..].iter_mut()) {
                        *o = pair[0];
                        *e = pair[1];
                    }
                } else {
                    // Upsampled column 2j - 1 is input column j - 1, column 2j is input column j.
                    e[1..=src.w].copy_from_slice(row);
                    o[..src.w].copy_from_slice(row);
                }
            }
            // B^T down the patch rows, for the even and the odd columns.
            for (src, dst) in cols.chunks_exact(4 * n).zip(combos.chunks_exact_mut(4 * n)) {
                let (d0, d1, d2, d3) = (&src[..n], &src[n..2 * n], &src[2 * n..3 * n], &src[3 * n..]);
                let (r0, rest) = dst.split_at_mut(n);
                let (r1, rest) = rest.split_at_mut(n);
                let (r2, r3) = rest.split_at_mut(n);
                for j in 0..n {
                    r0[j] = d0[j] - d2[j];
                    r1[j] = d1[j] + d2[j];
                    r2[j] = d2[j] - d1[j];
                    r3[j] = d1[j] - d3[j];
                }
            }
            // Then across the patch columns (even[tx], odd[tx], even[tx + 1], odd[tx + 1]).
            for i in 0..4 {
                let re = &combos[i * n..(i + 1) * n];
                let ro = &combos[(4 + i) * n..(5 + i) * n];
                let at = |j: usize| (i * 4 + j) * t + r * tw;
                let (lo, hi) = v.split_at_mut(at(2));
                let (v0, v1) = lo[at(0)..].split_at_mut(t);
                let (v2, v3) = hi.split_at_mut(t);
                let (v0, v1, v2, v3) = (&mut v0[..tw], &mut v1[..tw], &mut v2[..tw], &mut v3[..tw]);
                for tx in 0..tw {
                    v0[tx] = re[tx] - re[tx + 1];
                    v1[tx] = ro[tx] + re[tx + 1];
                    v2[tx] = re[tx + 1] - ro[tx];
                    v3[tx] = ro[tx] - ro[tx + 1];
                }
            }
        }
    }
}

kernels::dispatch! {
    /// Y = A^T m A with A^T = [[1, 1, 1, 0], [0, 1, -1, -1]] for one row of tiles, plus the bias: writes output
    /// rows `top` and (unless the image has an odd height and this is its last row) `bottom`. `scratch`: 4 x tiles.
    fn inverse_transform_row(
        m: &[&[f32]; 16],
        bias: f32,
        top: &mut [f32],
        bottom: Option<&mut [f32]>,
        scratch: &mut [f32],
    ) {
        let tw = m[0].len();
        let (y00, rest) = scratch.split_at_mut(tw);
        let (y01, rest) = rest.split_at_mut(tw);
        let (y10, y11) = rest.split_at_mut(tw);
        let y11 = &mut y11[..tw];
        for tx in 0..tw {
            let e = |xi: usize| m[xi][tx];
            // A^T down each patch column j: (m0 + m1 + m2, m1 - m2 - m3); then the same across columns. Written
            // out rather than with `array::from_fn` or `map`, which are no `#[inline(always)]` helpers: where LLVM
            // declined to inline `from_fn` here (after an unrelated change elsewhere in the crate) it ran without
            // the level's features, and the S-128 pixel stage took ~30% more CPU time.
            let s0 = [e(0) + e(4) + e(8), e(1) + e(5) + e(9), e(2) + e(6) + e(10), e(3) + e(7) + e(11)];
            let s1 = [e(4) - e(8) - e(12), e(5) - e(9) - e(13), e(6) - e(10) - e(14), e(7) - e(11) - e(15)];
            y00[tx] = s0[0] + s0[1] + s0[2] + bias;
            y01[tx] = s0[1] - s0[2] - s0[3] + bias;
            y10[tx] = s1[0] + s1[1] + s1[2] + bias;
            y11[tx] = s1[1] - s1[2] - s1[3] + bias;
        }
        interleave(top, y00, y01);
        if let Some(bottom) = bottom {
            interleave(bottom, y10, y11);
        }
    }
}

/// dst[2i] = a[i], dst[2i + 1] = b[i], for as much of `dst` as there is (an odd width drops the last b).
#[inline(always)]
fn interleave(dst: &mut [f32], a: &[f32], b: &[f32]) {
    let mut pairs = dst.chunks_exact_mut(2);
    for ((pair, &a), &b) in (&mut pairs).zip(a).zip(b) {
        pair[0] = a;
        pair[1] = b;
    }
    if let [last] = pairs.into_remainder() {
        *last = a[a.len() - 1];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn matches_direct_convolution() {
        let dev = Device::Cpu;
        // Odd and even sides, with and without upsampling, one band and many.
        for (h, w) in [(7, 6), (6, 9), (1, 1), (8, 8)] {
            let x = Tensor::randn(0f32, 1., (2, 5, h, w), &dev).unwrap();
            let weight = Tensor::randn(0f32, 1., (4, 5, 3, 3), &dev).unwrap();
            let u = transform_weights(&weight).unwrap();
            let bias = Tensor::randn(0f32, 1., 4, &dev).unwrap();
            let b4 = bias.reshape((1, 4, 1, 1)).unwrap();
            for upsample in [false, true] {
                let xin = if upsample { x.upsample_nearest2d(2 * h, 2 * w).unwrap() } else { x.clone() };
                let want = xin.conv2d(&weight, 1, 1, 1, 1).unwrap().broadcast_add(&b4).unwrap();
                // One tile row per band, three (the last band shorter, then the next image), all at once.
                let tw = (w * if upsample { 2 } else { 1 }).div_ceil(2);
                for band_values in [1, 16 * 5 * tw * 3, BAND_VALUES] {
                    let op = Winograd3x3 { u: &u, bias: Some(bias.to_vec1().unwrap()), upsample, band_values };
                    let got = x.apply_op1_no_bwd(&op).unwrap();
                    assert_eq!(got.dims(), want.dims());
                    let err = diff(&got, &want);
                    assert!(err < 2e-5, "{h}x{w} upsample {upsample} band {band_values}: {err}");
                    // The same through the slice entry, with a residual: bands split between threads when
                    // there are enough of them, steps split otherwise.
                    let res: Vec<f32> = (0..want.elem_count()).map(|i| ((i * 7919) % 613) as f32 * 0.01).collect();
                    let (xs, us) =
                        (x.flatten_all().unwrap().to_vec1().unwrap(), u.flatten_all().unwrap().to_vec1().unwrap());
                    let b = bias.to_vec1::<f32>().unwrap();
                    let conv = Conv3x3 { u: &us, c_out: 4, c_in: 5, bias: Some(&b), upsample, band_values };
                    let mut out = vec![f32::NAN; want.elem_count()];
                    for threads in [1, 3] {
                        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                        pool.install(|| conv.run(&xs, 2, h, w, Some(&res), &mut out));
                        let res = Tensor::from_vec(res.clone(), want.dims(), &dev).unwrap();
                        let got = Tensor::from_vec(out.clone(), want.dims(), &dev).unwrap();
                        let err = diff(&got, &(&want + &res).unwrap());
                        assert!(err < 2e-5, "{h}x{w} upsample {upsample} band {band_values} residual: {err}");
                    }
                }
            }
        }
    }

    /// The products are candle's batched matmul of the same strided views, bit for bit (the VQGAN's outputs did
    /// not move when they left candle), on one thread and on three.
    #[test]
    fn products_are_candles_matmul_bit_for_bit() {
        use candle_core::backend::BackendStorage;
        let (c_out, c_in, t) = (37, 70, 45);
        let u: Vec<f32> = (0..16 * c_out * c_in).map(|i| ((i * 7919) % 1009) as f32 * 0.01 - 5.0).collect();
        let v: Vec<f32> = (0..16 * c_in * t).map(|i| ((i * 104_729) % 997) as f32 * 0.01 - 5.0).collect();
        let (us, vs) = (CpuStorage::F32(u.clone()), CpuStorage::F32(v.clone()));
        let u_layout = Layout::new(Shape::from((16, c_out, c_in)), vec![c_in, 16 * c_in, 1], 0);
        let v_layout = Layout::new(Shape::from((16, c_in, t)), vec![t, 16 * t, 1], 0);
        let want = us.matmul(&vs, (16, c_out, t, c_in), &u_layout, &v_layout).unwrap();
        let want: Vec<u32> = want.as_slice::<f32>().unwrap().iter().map(|x| x.to_bits()).collect();
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut m = vec![0f32; 16 * c_out * t];
            pool.install(|| products(&u, &v, &mut m, c_out, c_in, t, threads));
            assert!(m.iter().map(|x| x.to_bits()).eq(want.iter().copied()), "{threads} threads");
        }
    }

    // Both transforms at each level against the baseline, bit for bit (they only add and subtract): odd and even
    // widths, with and without upsampling, a last row with and without its bottom half.
    kernels::at_every_level!(transforms_match_the_baseline_at_every_level, |level| {
        use crate::nn::kernels::{assert_same_bits, at_baseline_and};
        for (h, w, up) in [(7, 37, 1), (6, 20, 2), (1, 1, 1)] {
            let x: Vec<f32> = (0..2 * h * w).map(|i| ((i * 7919) % 613) as f32 * 0.01 - 3.0).collect();
            let src = Source { x: &x, h, w, up };
            let (th, tw) = ((h * up).div_ceil(2), (w * up).div_ceil(2));
            let (want, got) = at_baseline_and(level, || {
                let mut v = vec![0f32; 16 * th * tw];
                transform_tiles(&src, 1, 0, th, &mut v);
                v
            });
            assert_same_bits(level, &want, &got, "transform_tiles");
            let m: Vec<f32> = (0..16 * tw).map(|i| ((i * 104_729) % 977) as f32 * 0.01 - 4.0).collect();
            let rows: [&[f32]; 16] = std::array::from_fn(|xi| &m[xi * tw..][..tw]);
            let ow = w * up;
            for with_bottom in [true, false] {
                let (want, got) = at_baseline_and(level, || {
                    let (mut top, mut bottom, mut scratch) = (vec![0f32; ow], vec![0f32; ow], vec![0f32; 4 * tw]);
                    inverse_transform_row(&rows, 0.25, &mut top, with_bottom.then_some(&mut bottom[..]), &mut scratch);
                    top.extend(bottom);
                    top
                });
                assert_same_bits(level, &want, &got, "inverse_transform_row");
            }
        }
    });
}
