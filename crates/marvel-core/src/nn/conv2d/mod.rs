//! A 2-D convolution whose backward pass is matrix products, for training on the CPU.
//!
//! candle's CPU conv2d backward computes the input's gradient with a naive transposed convolution and the
//! weight's with a conv2d whose kernel is the whole output plane; both run far below gemm speed. Here the
//! convolution is written as im2col followed by a matmul: `cols = im2col(x)` is (B, C_in·k·k, Ho·Wo) and
//! `y = W · cols` with W reshaped to (C_out, C_in·k·k). Autograd then gives the weight's gradient as
//! `dy · colsᵀ` and the columns' as `Wᵀ · dy`, both gemms, and [`Im2Col`]'s backward folds the columns' gradient
//! back onto the input (col2im, one pass). The price is that `cols`, k² times the input, is kept for the backward.
//!
//! [`conv2d`] takes this path for tracked f32 CPU tensors. Inference keeps candle's conv2d (or the model's own
//! fused kernels), except for few channels at stride 1, which take the direct convolution (`ops::conv_direct`).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

mod geometry;

pub(crate) use geometry::Geometry;

/// (B, C, H, W) -> (B, C·k·k, Ho·Wo): each column holds the input window of one output position, in the
/// weight's (C, ki, kj) order; zeros where the window reaches into the padding.
struct Im2Col(Geometry);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::ops::values(storage, layout, "im2col")?;
        let g = self.0;
        let (b, _, _, _) = layout.shape().dims4()?;
        let (oh, ow) = g.out_hw();
        let (kk, l) = (g.kernel * g.kernel, oh * ow);
        let cols = g.im2col(x);
        Ok((CpuStorage::F32(cols), Shape::from((b, g.channels * kk, l))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&Col2Im(self.0))?))
    }
}

/// The adjoint of [`Im2Col`]: (B, C·k·k, Ho·Wo) -> (B, C, H, W), each column value added back to the input
/// position it was read from.
struct Col2Im(Geometry);

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let cols = super::ops::values(storage, layout, "col2im")?;
        let g = self.0;
        let (b, _, _) = layout.shape().dims3()?;
        let mut x = vec![0f32; b * g.channels * g.h * g.w];
        g.col2im_add(cols, &mut x);
        Ok((CpuStorage::F32(x), Shape::from((b, g.channels, g.h, g.w))))
    }
}

/// `conv2d(x, weight) + bias` as im2col + matmul, differentiable through gemms (see the module notes).
/// `x`: (B, C_in, H, W) f32 on the CPU; `weight`: (C_out, C_in, k, k); `bias`: (C_out).
pub fn conv2d_im2col(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    im2col_conv(x, weight, bias, stride, padding, 1, true)
}

/// `conv2d(upsample_nearest_x2(x), weight) + bias` at stride 1, the upsampling folded into im2col (and its
/// gradient into col2im): the 4x larger upsampled input is never made.
pub fn upsample2x_conv2d_im2col(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, padding: usize) -> Result<Tensor> {
    im2col_conv(x, weight, bias, 1, padding, 2, true)
}

/// `exact`: the training op keeps the composed form's arithmetic bit for bit; else its weight gradient may
/// round differently (see `ops/conv.rs`).
fn im2col_conv(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    up: usize,
    exact: bool,
) -> Result<Tensor> {
    let (_, c_in, h, w) = x.dims4()?;
    let (c_out, wc, k, k2) = weight.dims4()?;
    if wc != c_in || k != k2 || stride == 0 || h * up + 2 * padding < k || w * up + 2 * padding < k {
        candle_core::bail!(
            "conv2d: input {:?} does not fit weight {:?} (stride {stride}, padding {padding})",
            x.dims(),
            weight.dims()
        );
    }
    if x.dtype() != DType::F32 || !x.device().is_cpu() {
        candle_core::bail!("conv2d_im2col: f32 CPU tensors only, got {:?} on {:?}", x.dtype(), x.device());
    }
    let g = Geometry { channels: c_in, h, w, up, kernel: k, stride, padding };
    if super::ops::serve(&[x, weight]) && bias.is_none_or(|b| super::ops::serve(&[b])) {
        // One node for im2col, product and bias: its backward computes only the gradients that are asked for
        // (candle's matmul backward computes both operands' whatever is tracked) and folds the columns'
        // gradient image by image, never as a whole (B, C·k·k, Ho·Wo) tensor.
        let bias = match bias {
            Some(b) => b.clone(),
            None => Tensor::zeros(c_out, DType::F32, x.device())?,
        };
        return super::ops::conv2d(x, weight, &bias, g, exact);
    }
    // Tensors the training op does not take (not f32 on the CPU): the composed form, which is exact anyway.
    let _ = exact;
    composed_im2col_conv(x, weight, bias, g)
}

/// The im2col convolution composed from candle ops (`Im2Col`, a broadcast matmul, a broadcast add): for a weight
/// or bias that `nn::ops` does not take (not f32 on the CPU), and the reference its training op is tested against.
fn composed_im2col_conv(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, g: Geometry) -> Result<Tensor> {
    let (b, c_in, _, _) = x.dims4()?;
    let (c_out, _, k, _) = weight.dims4()?;
    let (oh, ow) = g.out_hw();
    let cols = x.contiguous()?.apply_op1(Im2Col(g))?;
    let y = weight.reshape((c_out, c_in * k * k))?.broadcast_left(b)?.matmul(&cols)?.reshape((b, c_out, oh, ow))?;
    match bias {
        Some(bias) => y.broadcast_add(&bias.reshape((1, c_out, 1, 1))?),
        None => Ok(y),
    }
}

/// Whether the im2col convolution serves these tensors: tracked, f32, on the CPU.
fn use_im2col(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> bool {
    let tracked = super::kernels::tracked(&[x, weight]) || bias.is_some_and(|b| super::kernels::tracked(&[b]));
    tracked && x.dtype() == DType::F32 && weight.dtype() == DType::F32 && x.device().is_cpu()
}

/// Inference (untracked f32 CPU tensors), stride 1, few channels: the direct convolution the training ops use for
/// narrow layers (`ops::conv_direct`, the same bounds), None where it does not apply. candle's CPU conv2d runs
/// such a layer (the single decoder's 3 -> 3 `conv_out` at 256×256) as a scalar im2col and a gemm whose n is the
/// few output channels, ~9 ms on the EPYC for 10.6 MFLOP.
fn direct_conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Option<Tensor>> {
    let tensors: Vec<&Tensor> = [x, weight].into_iter().chain(bias).collect();
    let (b, c_in, h, w) = x.dims4()?;
    let (c_out, wc, k, k2) = weight.dims4()?;
    let g = Geometry { channels: c_in, h, w, up: 1, kernel: k, stride, padding };
    if super::kernels::tracked(&tensors)
        || tensors.iter().any(|t| t.dtype() != DType::F32 || !t.device().is_cpu())
        || wc != c_in
        || k != k2
        || h + 2 * padding < k
        || w + 2 * padding < k
        || !super::ops::direct_conv_applies(&g, c_out)
    {
        return Ok(None);
    }
    let (oh, ow) = g.out_hw();
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let ws = weight.flatten_all()?.to_vec1::<f32>()?;
    let bs = match bias {
        Some(bias) => bias.flatten_all()?.to_vec1::<f32>()?,
        None => vec![0.0; c_out],
    };
    if bs.len() != c_out {
        candle_core::bail!("conv2d: bias of {} values for {c_out} output channels", bs.len());
    }
    let mut out = vec![0f32; b * c_out * oh * ow];
    super::ops::direct_conv_forward(g, &xs, &ws, &bs, b, &mut out);
    Ok(Some(Tensor::from_vec(out, (b, c_out, oh, ow), x.device())?))
}

/// A convolution (square kernel, symmetric padding, no dilation or groups): [`conv2d_im2col`] when gradients
/// are tracked on f32 CPU data; at inference the direct convolution for few channels at stride 1, else candle's
/// conv2d.
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, stride: usize, padding: usize) -> Result<Tensor> {
    if use_im2col(x, weight, bias) {
        return conv2d_im2col(x, weight, bias, stride, padding);
    }
    if let Some(y) = direct_conv2d(x, weight, bias, stride, padding)? {
        return Ok(y);
    }
    let y = x.conv2d(weight, padding, stride, 1, 1)?;
    match bias {
        Some(bias) => y.broadcast_add(&bias.reshape((1, (), 1, 1))?),
        None => Ok(y),
    }
}

/// [`conv2d`] whose training forward and backward may round differently from the composed im2col form, for
/// faster products (`nn::ops::conv`'s not-exact paths): for layers that no bit-for-bit guarantee covers (the
/// stage-2 discriminator and pixel decoder; `conv2d` itself stays exact for the single recipe's `conv_out`, whose
/// tiny overfit run a last-bit difference sends elsewhere).
pub fn conv2d_fast_grad(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    if use_im2col(x, weight, bias) {
        return im2col_conv(x, weight, bias, stride, padding, 1, false);
    }
    conv2d(x, weight, bias, stride, padding)
}

/// [`conv2d`] of the input upsampled x2 (nearest) at stride 1: [`upsample2x_conv2d_im2col`] when tracked on f32 CPU
/// data, candle's upsampling and conv2d otherwise.
pub fn upsample2x_conv2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, padding: usize) -> Result<Tensor> {
    if use_im2col(x, weight, bias) {
        return upsample2x_conv2d_im2col(x, weight, bias, padding);
    }
    let (_, _, h, w) = x.dims4()?;
    conv2d(&x.upsample_nearest2d(2 * h, 2 * w)?, weight, bias, 1, padding)
}

/// [`upsample2x_conv2d`] with [`conv2d_fast_grad`]'s weight gradient.
pub fn upsample2x_conv2d_fast_grad(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
) -> Result<Tensor> {
    if use_im2col(x, weight, bias) {
        return im2col_conv(x, weight, bias, 1, padding, 2, false);
    }
    upsample2x_conv2d(x, weight, bias, padding)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    use crate::quantize::lfq::SplitMix64;
    use crate::testutil::f32_bits as bits;

    fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
        let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1e-6);
        let err = (got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        err.to_scalar::<f32>().unwrap() / scale
    }

    /// The gradients of Σ m·y: with a different weight per output, every gradient entry is exercised.
    fn grads_of(y: &Tensor, m: &Tensor) -> candle_core::backprop::GradStore {
        y.mul(m).unwrap().sum_all().unwrap().backward().unwrap()
    }

    /// Each named tensor's gradient in `got` within `tol` (relative to the largest) of its gradient in `want`.
    fn assert_grads_close(
        got: &candle_core::backprop::GradStore,
        want: &candle_core::backprop::GradStore,
        tensors: &[(&str, &Tensor)],
        tol: f32,
        case: &str,
    ) {
        for (name, v) in tensors {
            let e = rel_err(got.get(v).unwrap(), want.get(v).unwrap());
            assert!(e < tol, "{case}: {name} gradient, relative error {e}");
        }
    }

    /// At inference, few channels at stride 1 (the single decoder's 3 -> 3 `conv_out`, and 4 -> 2 at 5×5 with no
    /// padding) take the direct convolution and agree with candle's conv2d; more channels, or stride 2, do not
    /// take it.
    #[test]
    fn direct_conv_matches_candle_at_inference() {
        let dev = Device::Cpu;
        let mut rng = SplitMix64::new(5);
        let mut randn = |shape: &[usize]| {
            let n = shape.iter().product();
            Tensor::from_vec((0..n).map(|_| rng.next_f64() as f32 - 0.5).collect::<Vec<f32>>(), shape, &dev).unwrap()
        };
        for (b, c_in, c_out, hw, k, pad) in [(2, 3, 3, 37, 3, 1), (1, 4, 2, 19, 5, 0)] {
            let x = randn(&[b, c_in, hw, hw + 3]);
            let (w, bias) = (randn(&[c_out, c_in, k, k]), randn(&[c_out]));
            let direct = direct_conv2d(&x, &w, Some(&bias), 1, pad).unwrap().expect("takes the direct path");
            let candle = x.conv2d(&w, pad, 1, 1, 1).unwrap().broadcast_add(&bias.reshape((1, c_out, 1, 1)).unwrap());
            let candle = candle.unwrap();
            assert_eq!(direct.dims(), candle.dims());
            assert!(rel_err(&direct, &candle) < 1e-5, "{c_in} -> {c_out}: {}", rel_err(&direct, &candle));
            assert!(rel_err(&conv2d(&x, &w, Some(&bias), 1, pad).unwrap(), &candle) < 1e-5);
        }
        let x = randn(&[1, 17, 9, 9]);
        assert!(direct_conv2d(&x, &randn(&[3, 17, 3, 3]), None, 1, 1).unwrap().is_none(), "17 x 9 taps");
        let x = randn(&[1, 3, 9, 9]);
        assert!(direct_conv2d(&x, &randn(&[3, 3, 3, 3]), None, 2, 1).unwrap().is_none(), "stride 2");
    }

    /// Forward and the gradients of input, weight and bias equal candle's conv2d on random shapes: 1x1 and 3x3
    /// kernels (and a 4x4), stride 1 and 2, with and without padding, odd and even sides.
    #[test]
    fn matches_candle_conv2d_and_its_gradients() {
        let dev = Device::Cpu;
        let mut rng = SplitMix64::new(9);
        let mut cases = vec![
            (2, 3, 4, 7, 6, 3, 1, 1),
            (1, 5, 2, 8, 8, 3, 2, 1),
            (2, 4, 3, 5, 9, 1, 1, 0),
            (1, 2, 3, 6, 6, 1, 2, 0),
        ];
        cases.push((1, 3, 2, 9, 7, 3, 2, 0));
        cases.push((2, 2, 5, 8, 6, 4, 2, 1));
        for _ in 0..6 {
            let pick = |rng: &mut SplitMix64, lo: usize, hi: usize| lo + rng.below((hi - lo + 1) as u64) as usize;
            let k: usize = [1, 3][pick(&mut rng, 0, 1)];
            let (stride, padding) = (pick(&mut rng, 1, 2), pick(&mut rng, 0, k / 2));
            let (b, ci, co) = (pick(&mut rng, 1, 2), pick(&mut rng, 1, 6), pick(&mut rng, 1, 6));
            // candle's own backward takes the output padding of both axes from the height, so its gradients are
            // only right when the sides agree modulo the stride (the adjoint test below covers the rest).
            let h = pick(&mut rng, k, 10);
            let w = h + stride * pick(&mut rng, 0, 3);
            cases.push((b, ci, co, h, w, k, stride, padding));
        }
        for (b, ci, co, h, w, k, stride, padding) in cases {
            let case = format!("b{b} {ci}->{co} {h}x{w} k{k} s{stride} p{padding}");
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., (b, ci, h, w), &dev).unwrap()).unwrap();
            let wt = Var::from_tensor(&Tensor::randn(0f32, 1., (co, ci, k, k), &dev).unwrap()).unwrap();
            let bias = Var::from_tensor(&Tensor::randn(0f32, 1., co, &dev).unwrap()).unwrap();
            // A loss with a different weight per output, so every gradient entry is exercised.
            let mix = |y: &Tensor| y.mul(&Tensor::randn(0f32, 1., y.shape(), &dev).unwrap()).unwrap();
            let got = conv2d_im2col(&x, &wt, Some(&bias), stride, padding).unwrap();
            let want = x
                .conv2d(&wt, padding, stride, 1, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, co, 1, 1)).unwrap())
                .unwrap();
            assert_eq!(got.dims(), want.dims(), "{case}");
            assert!(rel_err(&got, &want) < 1e-4, "{case}: forward");
            let m = mix(&want);
            let (g_got, g_want) = (grads_of(&got, &m), grads_of(&want, &m));
            assert_grads_close(&g_got, &g_want, &[("input", &x), ("weight", &wt), ("bias", &bias)], 1e-4, &case);
        }
    }

    /// col2im is im2col's adjoint, <col2im(g), x> = <g, im2col(x)>, on any geometry (sides of either parity,
    /// windows that skip input rows at stride 2): so the input gradient, W^T dy folded by col2im, is exact.
    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        let dev = Device::Cpu;
        for (c, h, w, up, kernel, stride, padding) in [
            (2, 8, 9, 1, 3, 2, 1),
            (3, 7, 4, 1, 3, 2, 0),
            (1, 5, 6, 1, 1, 3, 0),
            (2, 6, 5, 1, 4, 1, 2),
            (2, 3, 5, 2, 3, 1, 1),
        ] {
            let g = Geometry { channels: c, h, w, up, kernel, stride, padding };
            let (oh, ow) = g.out_hw();
            let x = Tensor::randn(0f32, 1., (2, c, h, w), &dev).unwrap();
            let cols_grad = Tensor::randn(0f32, 1., (2, c * kernel * kernel, oh * ow), &dev).unwrap();
            let cols = x.apply_op1_no_bwd(&Im2Col(g)).unwrap();
            let folded = cols_grad.apply_op1_no_bwd(&Col2Im(g)).unwrap();
            let dot = |a: &Tensor, b: &Tensor| a.mul(b).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            let (lhs, rhs) = (dot(&folded, &x), dot(&cols_grad, &cols));
            assert!((lhs - rhs).abs() <= 1e-4 * lhs.abs().max(1.0), "{g:?}: {lhs} vs {rhs}");
        }
    }

    /// im2col into a reused buffer writes every value, the padding's zeros too: a buffer full of NaN (a pooled
    /// buffer's stale values) comes out equal to fresh columns.
    #[test]
    fn im2col_into_overwrites_stale_values() {
        for (c, h, w, up, kernel, stride, padding) in
            [(2, 5, 6, 1, 3, 1, 1), (3, 7, 4, 1, 4, 2, 2), (2, 3, 4, 2, 3, 1, 1)]
        {
            let g = Geometry { channels: c, h, w, up, kernel, stride, padding };
            let x: Vec<f32> = (0..2 * c * h * w).map(|i| i as f32 + 1.0).collect();
            let fresh = g.im2col(&x);
            let mut stale = vec![f32::NAN; fresh.len()];
            g.im2col_into(&x, &mut stale);
            assert!(fresh.contains(&0.0), "{g:?}: the case has padding");
            assert_eq!(
                fresh.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                stale.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{g:?}"
            );
        }
    }

    /// A band of output rows' columns are the full columns' slice of those positions, on every geometry kind
    /// (padding, stride 2, upsampling); col2im of each band's columns, added band after band, folds back what
    /// col2im of the full columns does (integer-valued, so any order of the adds gives the same bits).
    #[test]
    fn bands_of_rows_are_slices_of_the_columns() {
        for (c, h, w, up, kernel, stride, padding) in
            [(2, 5, 6, 1, 3, 1, 1), (3, 7, 4, 1, 4, 2, 2), (2, 3, 4, 2, 3, 1, 1), (1, 6, 5, 1, 1, 1, 0)]
        {
            let g = Geometry { channels: c, h, w, up, kernel, stride, padding };
            let (oh, ow) = g.out_hw();
            let (kk, l) = (kernel * kernel, oh * ow);
            let x: Vec<f32> = (0..2 * c * h * w).map(|i| i as f32 + 1.0).collect();
            let full = g.im2col(&x);
            let grads: Vec<f32> = (0..full.len()).map(|i| (i % 7) as f32 - 3.0).collect();
            let mut folded = vec![0f32; x.len()];
            g.col2im_add(&grads, &mut folded);
            for band in [1, 2, oh] {
                let mut banded = vec![0f32; x.len()];
                for r0 in (0..oh).step_by(band) {
                    let rows = r0..(r0 + band).min(oh);
                    let n = rows.len() * ow;
                    let mut cols = vec![f32::NAN; 2 * c * kk * n];
                    g.im2col_rows_into(&x, rows.clone(), &mut cols);
                    // Row q of image-channel plane p: the full columns' row at positions r0·Wo.. of that band.
                    let part = |src: &[f32]| -> Vec<f32> {
                        (0..2 * c * kk).flat_map(|q| src[q * l + r0 * ow..][..n].to_vec()).collect()
                    };
                    assert_eq!(cols, part(&full), "{g:?} rows {rows:?}");
                    g.col2im_rows_add(&part(&grads), rows, &mut banded);
                }
                assert_eq!(banded, folded, "{g:?} bands of {band}");
            }
        }
    }

    /// col2im of a group of output rows writes only its `input_rows`, and groups of `rows_for_disjoint_groups`
    /// rows two apart write disjoint ones, which the banded backward's two passes rely on (padding larger and
    /// smaller than the halo, stride 2, upsampling, a 1x1 kernel).
    #[test]
    fn groups_two_apart_fold_onto_disjoint_rows() {
        for (h, w, up, kernel, stride, padding) in
            [(23, 4, 1, 5, 1, 2), (17, 3, 1, 4, 2, 1), (9, 5, 2, 3, 1, 1), (8, 3, 1, 1, 1, 0), (12, 4, 1, 3, 1, 0)]
        {
            let g = Geometry { channels: 1, h, w, up, kernel, stride, padding };
            let (oh, ow) = g.out_hw();
            let n = g.rows_for_disjoint_groups();
            let groups: Vec<_> = (0..oh).step_by(n).map(|r| r..(r + n).min(oh)).collect();
            assert!(groups.len() >= 3, "{g:?}: the case has groups two apart");
            for (s, rows) in groups.iter().enumerate() {
                let mut x = vec![0f32; h * w];
                g.col2im_rows_add(&vec![1.0; kernel * kernel * rows.len() * ow], rows.clone(), &mut x);
                let inside = g.input_rows(rows.clone());
                let touched: Vec<usize> = (0..h).filter(|&r| x[r * w..][..w].iter().any(|&v| v != 0.0)).collect();
                assert!(touched.iter().all(|r| inside.contains(r)), "{g:?} rows {rows:?}: {touched:?} vs {inside:?}");
                assert!(touched.first() == Some(&inside.start) && touched.last() == Some(&(inside.end - 1)));
                if let Some(next) = groups.get(s + 2) {
                    assert!(inside.end <= g.input_rows(next.clone()).start, "{g:?}: groups {s} and {}", s + 2);
                }
            }
        }
    }

    /// The upsampling folded into im2col: forward and gradients equal candle's upsample_nearest2d + conv2d.
    #[test]
    fn upsampled_conv_matches_candle() {
        let dev = Device::Cpu;
        for (c_in, c_out, h, w) in [(3, 4, 5, 7), (2, 3, 4, 4)] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, c_in, h, w), &dev).unwrap()).unwrap();
            let wt = Var::from_tensor(&Tensor::randn(0f32, 1., (c_out, c_in, 3, 3), &dev).unwrap()).unwrap();
            let bias = Var::from_tensor(&Tensor::randn(0f32, 1., c_out, &dev).unwrap()).unwrap();
            let got = upsample2x_conv2d(&x, &wt, Some(&bias), 1).unwrap();
            let up = x.upsample_nearest2d(2 * h, 2 * w).unwrap();
            let want =
                up.conv2d(&wt, 1, 1, 1, 1).unwrap().broadcast_add(&bias.reshape((1, c_out, 1, 1)).unwrap()).unwrap();
            assert!(rel_err(&got, &want) < 1e-4);
            let m = Tensor::randn(0f32, 1., want.shape(), &dev).unwrap();
            let g_got = grads_of(&got, &m);
            let g_want = grads_of(&want, &m);
            let case = format!("{c_in}->{c_out} {h}x{w}");
            assert_grads_close(&g_got, &g_want, &[("input", &x), ("weight", &wt), ("bias", &bias)], 1e-4, &case);
        }
    }

    /// A frozen weight and bias (plain tensors) get no gradient, and the input's still equals candle's; a
    /// frozen input with a trained weight likewise.
    #[test]
    fn frozen_operands_get_no_gradient() {
        let dev = Device::Cpu;
        // Sides that agree modulo the stride (see the first test on candle's conv backward).
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, 8, 6), &dev).unwrap()).unwrap();
        let wt = Tensor::randn(0f32, 1., (4, 3, 3, 3), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1., 4, &dev).unwrap();
        let got = conv2d(&x, &wt, Some(&bias), 1, 1).unwrap();
        let want = x.conv2d(&wt, 1, 1, 1, 1).unwrap().broadcast_add(&bias.reshape((1, 4, 1, 1)).unwrap()).unwrap();
        let m = Tensor::randn(0f32, 1., want.shape(), &dev).unwrap();
        let g_got = grads_of(&got, &m);
        let g_want = grads_of(&want, &m);
        assert!(g_got.get(&wt).is_none() && g_got.get(&bias).is_none());
        assert!(rel_err(g_got.get(&x).unwrap(), g_want.get(&x).unwrap()) < 1e-4);

        let xs = x.as_tensor().detach();
        let wv = Var::from_tensor(&wt).unwrap();
        let got = conv2d(&xs, &wv, None, 2, 0).unwrap();
        let want = xs.conv2d(&wv, 0, 2, 1, 1).unwrap();
        let m = Tensor::randn(0f32, 1., want.shape(), &dev).unwrap();
        let g_got = grads_of(&got, &m);
        let g_want = grads_of(&want, &m);
        assert!(g_got.get(&xs).is_none());
        assert!(rel_err(g_got.get(&wv).unwrap(), g_want.get(&wv).unwrap()) < 1e-4);
    }

    /// The training op (`nn::ops::conv2d`) gives the composed im2col convolution's forward and gradients bit
    /// for bit: the same products in the same order (the convolution of the single-recipe decoder's `conv_out`
    /// sits in a training run that a last-bit difference sends elsewhere).
    #[test]
    fn training_op_matches_the_composed_form_bit_for_bit() {
        let dev = Device::Cpu;
        // k·k·C_in from 27 to 576 (beyond one gemm depth block), stride 1 and 2.
        for (b, ci, co, h, w, k, stride, padding) in
            [(2, 3, 3, 16, 16, 3, 1, 1), (2, 64, 32, 12, 10, 3, 1, 1), (3, 8, 5, 9, 9, 4, 2, 1)]
        {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., (b, ci, h, w), &dev).unwrap()).unwrap();
            let wt = Var::from_tensor(&Tensor::randn(0f32, 1., (co, ci, k, k), &dev).unwrap()).unwrap();
            let bias = Var::from_tensor(&Tensor::randn(0f32, 1., co, &dev).unwrap()).unwrap();
            let g = Geometry { channels: ci, h, w, up: 1, kernel: k, stride, padding };
            let got = crate::nn::ops::conv2d(&x, &wt, &bias, g, true).unwrap();
            let want = composed_im2col_conv(&x, &wt, Some(&bias), g).unwrap();
            assert_eq!(bits(&got), bits(&want), "forward");
            let m = Tensor::randn(0f32, 1., want.shape(), &dev).unwrap();
            let g_got = grads_of(&got, &m);
            let g_want = grads_of(&want, &m);
            for (name, v) in [("input", &x), ("weight", &wt), ("bias", &bias)] {
                assert_eq!(
                    bits(g_got.get(v).unwrap()),
                    bits(g_want.get(v).unwrap()),
                    "{ci}->{co} k{k}: {name} gradient"
                );
            }
        }
    }

    /// The fast-gradient convolution on images of one band (see the banded test below): the same forward and
    /// input gradient as the composed form, bit for bit where the bands make them (within rounding for the narrow
    /// layers it computes directly, `ops/conv_direct.rs`, and for the stride-1 layers the shifted windows take on
    /// AVX-512, `ops/conv_shifted.rs`); the weight's gradient (a differently laid out product) and the bias's
    /// within rounding of it; nothing for a frozen weight.
    #[test]
    fn fast_weight_gradient_matches_the_composed_form() {
        let dev = Device::Cpu;
        for (b, ci, co, h, w, k, stride, padding) in [
            (2, 3, 32, 16, 16, 3, 1, 1),
            (2, 64, 32, 12, 10, 3, 1, 1),
            (3, 8, 5, 9, 9, 4, 2, 1),
            (1, 3, 4, 20, 20, 5, 1, 2),
        ] {
            let case = format!("{ci}->{co} {h}x{w} k{k} s{stride}");
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., (b, ci, h, w), &dev).unwrap()).unwrap();
            let wt = Var::from_tensor(&Tensor::randn(0f32, 1., (co, ci, k, k), &dev).unwrap()).unwrap();
            let bias = Var::from_tensor(&Tensor::randn(0f32, 1., co, &dev).unwrap()).unwrap();
            let g = Geometry { channels: ci, h, w, up: 1, kernel: k, stride, padding };
            let got = conv2d_fast_grad(&x, &wt, Some(&bias), stride, padding).unwrap();
            let want = composed_im2col_conv(&x, &wt, Some(&bias), g).unwrap();
            let m = Tensor::randn(0f32, 1., want.shape(), &dev).unwrap();
            let g_got = grads_of(&got, &m);
            let g_want = grads_of(&want, &m);
            let (dx_got, dx_want) = (g_got.get(&x).unwrap(), g_want.get(&x).unwrap());
            #[cfg(target_arch = "x86_64")]
            let shifted = crate::nn::ops::shifted_conv_applies(&g) && !crate::nn::ops::direct_conv_applies(&g, co);
            #[cfg(not(target_arch = "x86_64"))]
            let shifted = false;
            if crate::nn::ops::direct_conv_applies(&g, co) || shifted {
                assert!(rel_err(&got, &want) < 1e-5, "{case}: forward");
                assert!(rel_err(dx_got, dx_want) < 1e-5, "{case}: input gradient");
            } else {
                assert_eq!(bits(&got), bits(&want), "{case}: forward");
                assert_eq!(bits(dx_got), bits(dx_want), "{case}: input gradient");
            }
            assert_grads_close(&g_got, &g_want, &[("weight", &wt), ("bias", &bias)], 1e-5, &case);
        }
        // Upsampled: against the exact op (itself checked against candle above).
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 5, 9, 7), &dev).unwrap()).unwrap();
        let wt = Var::from_tensor(&Tensor::randn(0f32, 1., (6, 5, 3, 3), &dev).unwrap()).unwrap();
        let m = Tensor::randn(0f32, 1., (2, 6, 18, 14), &dev).unwrap();
        let grads = |y: Tensor| grads_of(&y, &m);
        let (g_got, g_want) = (
            grads(upsample2x_conv2d_fast_grad(&x, &wt, None, 1).unwrap()),
            grads(upsample2x_conv2d(&x, &wt, None, 1).unwrap()),
        );
        assert_grads_close(&g_got, &g_want, &[("input", &x), ("weight", &wt)], 1e-5, "upsampled");
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, 8, 8), &dev).unwrap()).unwrap();
        let wt = Tensor::randn(0f32, 1., (4, 3, 3, 3), &dev).unwrap();
        let y = conv2d_fast_grad(&x, &wt, None, 1, 1).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&wt).is_none() && grads.get(&x).is_some());
    }

    /// The not-exact path made band by band of output rows (bands of 1 and 2 rows, the last one shorter, on
    /// padded, strided and upsampled geometries): forward and every gradient within rounding of the exact op's;
    /// a frozen input or weight gets no gradient and leaves the other's values; 1 and 3 threads give the same bits.
    #[test]
    fn banded_convolution_matches_the_exact_op() {
        let dev = Device::Cpu;
        for (b, ci, co, h, w, k, stride, padding, up) in [
            (2, 3, 32, 9, 8, 3, 1, 1, 1),
            (2, 16, 8, 7, 10, 3, 1, 1, 1),
            (3, 8, 5, 9, 9, 4, 2, 1, 1),
            (2, 5, 6, 5, 4, 3, 1, 1, 2),
            // Four slabs of six rows whose 5x5 windows overlap by four input rows (see `ops/conv_bands.rs`).
            (2, 4, 6, 23, 6, 5, 1, 2, 1),
        ] {
            let g = Geometry { channels: ci, h, w, up, kernel: k, stride, padding };
            let (oh, ow) = g.out_hw();
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., (b, ci, h, w), &dev).unwrap()).unwrap();
            let wt = Var::from_tensor(&Tensor::randn(0f32, 1., (co, ci, k, k), &dev).unwrap()).unwrap();
            let bias = Var::from_tensor(&Tensor::randn(0f32, 1., co, &dev).unwrap()).unwrap();
            let m = Tensor::randn(0f32, 1., (b, co, oh, ow), &dev).unwrap();
            let run = |x: &Tensor, wt: &Tensor, band: Option<usize>| {
                let y = match band {
                    Some(rows) => crate::nn::ops::conv2d_in_bands(x, wt, &bias, g, rows * ci * k * k * ow).unwrap(),
                    None => crate::nn::ops::conv2d(x, wt, &bias, g, true).unwrap(),
                };
                let grads = grads_of(&y, &m);
                let grad = |t: &Tensor| grads.get(t).cloned();
                (y, grad(x), grad(wt), grad(&bias))
            };
            let want = run(&x, &wt, None);
            for rows in [1, 2] {
                let case = format!("{ci}->{co} {h}x{w} k{k} s{stride} up{up}, bands of {rows} of {oh} rows");
                assert_matches_exact(&x, &wt, &want, |x, wt| run(x, wt, Some(rows)), &case);
            }
        }
    }

    /// A not-exact convolution's forward and its gradients of Σ m·y: None for a frozen operand.
    type Run = (Tensor, Option<Tensor>, Option<Tensor>, Option<Tensor>);

    /// `fast` (a not-exact path's run on an input and a weight) against the exact op's run `want` on `x` and `wt`:
    /// forward and every gradient within 1e-5 relative; a frozen input or weight gets no gradient and leaves the
    /// other's values; 1 and 3 threads give the same bits.
    fn assert_matches_exact(x: &Var, wt: &Var, want: &Run, fast: impl Fn(&Tensor, &Tensor) -> Run + Sync, case: &str) {
        let (y_want, dx_want, dw_want, db_want) = want;
        let (dx_want, dw_want, db_want) =
            (dx_want.as_ref().unwrap(), dw_want.as_ref().unwrap(), db_want.as_ref().unwrap());
        let (y, dx, dw, db) = fast(x, wt);
        for (name, got, want) in [
            ("forward", &y, y_want),
            ("input gradient", &dx.unwrap(), dx_want),
            ("weight gradient", &dw.unwrap(), dw_want),
            ("bias gradient", &db.unwrap(), db_want),
        ] {
            let e = rel_err(got, want);
            assert!(e < 1e-5, "{case}: {name}, relative error {e}");
        }
        let (xs, ws) = (x.as_tensor().detach(), wt.as_tensor().detach());
        let (_, dx, dw, _) = fast(&xs, wt);
        assert!(dx.is_none(), "{case}: frozen input");
        assert!(rel_err(&dw.unwrap(), dw_want) < 1e-5, "{case}: frozen input");
        let (_, dx, dw, _) = fast(x, &ws);
        assert!(dw.is_none(), "{case}: frozen weight");
        assert!(rel_err(&dx.unwrap(), dx_want) < 1e-5, "{case}: frozen weight");
        let bits = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let (y, dx, dw, db) = pool.install(|| fast(x, wt));
            [y, dx.unwrap(), dw.unwrap(), db.unwrap()].map(|t| {
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            })
        };
        assert_eq!(bits(1), bits(3), "{case}: 1 and 3 threads");
    }

    /// The not-exact path through the shifted windows (stride 1: padded and not, padding k - 1 on maps smaller
    /// than the kernel, k of 1, 3 and 5, runs of positions that end mid-row, several runs and several groups of
    /// runs per image, more channels than the direct path takes and fewer, and over 64 output channels, for which
    /// sgemm turns its loops around): forward and every gradient within rounding of the exact op's; a frozen input
    /// or weight gets no gradient and leaves the other's values; 1 and 3 threads give the same bits. Built only
    /// where the build host has AVX-512 (else ignored, saying why), run at the level the CPU runs.
    #[test]
    #[cfg_attr(not(marvel_host_avx512), ignore = "AVX-512: the build host lacks it, or this is a cross build")]
    fn shifted_window_convolution_matches_the_exact_op() {
        let level = crate::nn::kernels::level();
        assert_eq!(level, crate::nn::kernels::Level::Avx512, "the build host had AVX-512: is MARVEL_SIMD lowering it?");
        let dev = Device::Cpu;
        for (b, ci, co, h, w, k, padding) in [
            (2, 3, 32, 9, 8, 3, 1),
            (2, 4, 20, 40, 37, 3, 1),
            (1, 5, 17, 70, 70, 3, 0),
            (2, 6, 7, 23, 6, 5, 2),
            (2, 33, 3, 12, 11, 1, 0),
            (2, 130, 140, 6, 5, 3, 1),
            (1, 3, 4, 2, 3, 5, 4),
        ] {
            let g = Geometry { channels: ci, h, w, up: 1, kernel: k, stride: 1, padding };
            let (oh, ow) = g.out_hw();
            let case = format!("{ci}->{co} {h}x{w} k{k} p{padding}");
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., (b, ci, h, w), &dev).unwrap()).unwrap();
            let wt = Var::from_tensor(&Tensor::randn(0f32, 1., (co, ci, k, k), &dev).unwrap()).unwrap();
            let bias = Var::from_tensor(&Tensor::randn(0f32, 1., co, &dev).unwrap()).unwrap();
            let m = Tensor::randn(0f32, 1., (b, co, oh, ow), &dev).unwrap();
            let run = |x: &Tensor, wt: &Tensor, shifted: bool| {
                let y = if shifted {
                    let y = crate::nn::ops::conv2d_shifted(x, wt, &bias, g);
                    y.expect("AVX-512 and stride 1: the shifted windows apply").unwrap()
                } else {
                    crate::nn::ops::conv2d(x, wt, &bias, g, true).unwrap()
                };
                let grads = grads_of(&y, &m);
                let grad = |t: &Tensor| grads.get(t).cloned();
                (y, grad(x), grad(wt), grad(&bias))
            };
            let want = run(&x, &wt, false);
            assert_matches_exact(&x, &wt, &want, |x, wt| run(x, wt, true), &case);
        }
    }

    /// Untracked inputs with more channels than the direct convolution takes (17 × 9 taps per output) keep
    /// candle's conv2d, bit for bit.
    #[test]
    fn untracked_inputs_keep_candles_conv2d() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (1, 17, 6, 6), &dev).unwrap();
        let w = Tensor::randn(0f32, 1., (3, 17, 3, 3), &dev).unwrap();
        let y = conv2d(&x, &w, None, 1, 1).unwrap();
        assert!(!y.track_op());
        let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(bits(&y), bits(&x.conv2d(&w, 1, 1, 1, 1).unwrap()));
        let wv = Var::from_tensor(&w).unwrap();
        assert!(conv2d(&x, &wv, None, 1, 1).unwrap().track_op());
        let err = conv2d_im2col(&x, &w.narrow(1, 0, 16).unwrap(), None, 1, 1).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
    }
}
