//! Each op against the same math composed from candle ops: the forward and every gradient, and the bits of the
//! gradients across thread counts.

use candle_core::{Device, Tensor, Var, D};

use super::{layer_norm, linear, linear_attention, linear_gelu, Activation};

fn rnd(shape: &[usize], seed: u64) -> Var {
    // Deterministic values without a global RNG: a hash of the index, in [-1, 1).
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n as u64)
        .map(|i| {
            let h = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
            let h = (h ^ (h >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            ((h >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
}

/// max |got - want| / max |want|.
fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims());
    let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    diff / scale.max(1e-30)
}

/// Runs `f` (the op or its composed twin) on `inputs`, with the loss Σ y·r for a fixed r so that every output
/// element gets its own gradient; returns the output and the inputs' gradients.
fn forward_backward(inputs: &[&Var], f: impl Fn(&[Tensor]) -> Tensor) -> (Tensor, Vec<Tensor>) {
    let ts: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts);
    let r = rnd(y.dims(), 99).as_detached_tensor();
    let grads = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    let gs = ts.iter().map(|t| grads.get(t).expect("every input gets a gradient").clone()).collect();
    (y.detach(), gs)
}

fn assert_matches(
    name: &str,
    inputs: &[&Var],
    op: impl Fn(&[Tensor]) -> Tensor + Sync,
    composed: impl Fn(&[Tensor]) -> Tensor,
) {
    let (y, gs) = forward_backward(inputs, &op);
    let (y_ref, gs_ref) = forward_backward(inputs, composed);
    let e = rel_err(&y, &y_ref);
    assert!(e < 1e-5, "{name}: forward relative error {e}");
    for (i, (g, g_ref)) in gs.iter().zip(&gs_ref).enumerate() {
        let e = rel_err(g, g_ref);
        assert!(e < 1e-5, "{name}: gradient of input {i}: relative error {e}");
    }
    // The same gradients, to the bit, on 1 and on 3 threads.
    let on = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| forward_backward(inputs, &op).1)
    };
    let (one, three) = (on(1), on(3));
    for (i, (a, b)) in one.iter().zip(&three).enumerate() {
        let (a, b) =
            (a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name}: input {i}'s gradient depends on the threads"
        );
    }
}

#[test]
fn linear_matches_composed() {
    // 70 rows: more than one column band of the bias sum, and rows not a multiple of any tile.
    let (x, w, b) = (rnd(&[2, 35, 24], 1), rnd(&[70, 24], 2), rnd(&[70], 3));
    assert_matches(
        "linear",
        &[&x, &w, &b],
        |t| linear(&t[0], &t[1], &t[2]).unwrap(),
        |t| t[0].broadcast_matmul(&t[1].t().unwrap()).unwrap().broadcast_add(&t[2]).unwrap(),
    );
}

#[test]
fn layer_norm_matches_composed() {
    // 75 rows: more than two of the reduction's fixed chunks, the last one partial.
    let (x, w, b) = (rnd(&[3, 25, 40], 4), rnd(&[40], 5), rnd(&[40], 6));
    let eps = 1e-5;
    assert_matches(
        "layer_norm",
        &[&x, &w, &b],
        |t| layer_norm(&t[0], &t[1], &t[2], eps).unwrap(),
        |t| {
            let mean = t[0].mean_keepdim(D::Minus1).unwrap();
            let centred = t[0].broadcast_sub(&mean).unwrap();
            let var = centred.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            let normed = centred.broadcast_div(&(var + eps).unwrap().sqrt().unwrap()).unwrap();
            normed.broadcast_mul(&t[1]).unwrap().broadcast_add(&t[2]).unwrap()
        },
    );
}

#[test]
fn linear_gelu_matches_composed() {
    // Weights scaled so that the pre-activations reach both of the CDF's forms and its tails.
    let (x, b) = (rnd(&[2, 35, 24], 7), rnd(&[70], 8));
    let w = Var::from_tensor(&(rnd(&[70, 24], 9).as_tensor() * 1.5).unwrap()).unwrap();
    assert_matches(
        "linear_gelu",
        &[&x, &w, &b],
        |t| linear_gelu(&t[0], &t[1], &t[2]).unwrap(),
        |t| t[0].broadcast_matmul(&t[1].t().unwrap()).unwrap().broadcast_add(&t[2]).unwrap().gelu_erf().unwrap(),
    );
}

#[test]
fn linear_attention_matches_composed() {
    let (b, l, k, d, heads) = (2, 19, 16, 24, 3);
    let hd = d / heads;
    let (x, b_in) = (rnd(&[b, l, k], 10), rnd(&[3 * d], 11));
    let w = Var::from_tensor(&(rnd(&[3 * d, k], 12).as_tensor() * 0.8).unwrap()).unwrap();
    assert_matches(
        "linear_attention",
        &[&x, &w, &b_in],
        |t| linear_attention(&t[0], &t[1], &t[2], heads).unwrap(),
        |t| {
            let qkv = t[0].broadcast_matmul(&t[1].t().unwrap()).unwrap().broadcast_add(&t[2]).unwrap();
            let qkv = qkv.reshape((b, l, 3, heads, hd)).unwrap().permute((2, 0, 3, 1, 4)).unwrap();
            let part = |i: usize| qkv.get(i).unwrap().contiguous().unwrap();
            let s = (part(0).matmul(&part(1).t().unwrap()).unwrap() / (hd as f64).sqrt()).unwrap();
            let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
            p.matmul(&part(2)).unwrap().transpose(1, 2).unwrap().reshape((b, l, d)).unwrap()
        },
    );
}

/// LeakyReLU equals the composed `max(x, 0.1·x)` to the bit, forward and backward, on values that include
/// exact zeros (where candle's `maximum` splits the gradient between its tied operands) and both signs of the
/// incoming gradient.
#[test]
fn leaky_relu_matches_the_composed_form_bit_for_bit() {
    let x = rnd(&[2, 3, 37, 41], 5).as_tensor().detach();
    // Every 7th value exactly 0, so ties occur.
    let mask = Tensor::from_vec(
        (0..x.elem_count()).map(|i| f32::from(u8::from(i % 7 != 0))).collect(),
        x.dims(),
        &Device::Cpu,
    )
    .unwrap();
    let x = Var::from_tensor(&(x * mask).unwrap()).unwrap();
    let (y, gs) = forward_backward(&[&x], |t| super::leaky_relu(&t[0], 0.1).unwrap());
    let (y_ref, gs_ref) = forward_backward(&[&x], |t| t[0].maximum(&(&t[0] * 0.1).unwrap()).unwrap());
    let bits =
        |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&y), bits(&y_ref), "forward");
    assert_eq!(bits(&gs[0]), bits(&gs_ref[0]), "gradient");
    // The ties did occur and got the halved share (0.5 + 0.05 of the incoming gradient), not the whole.
    let xs = x.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let r = rnd(y.dims(), 99).as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let g = gs[0].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let i = xs.iter().position(|&v| v == 0.0).unwrap();
    assert!((g[i] - 0.55 * r[i]).abs() <= 1e-6 * r[i].abs().max(1.0), "{} vs {}", g[i], r[i]);
}

/// The shared filter equals the im2col convolution of the zero-padded maps (each (B, C) map a single-channel
/// image, the filter its one output channel), forward and the input's gradient: the discriminator's blur (4x4,
/// stride 2, one pixel each side), odd sides with the extra pixel after, a 3x3 at stride 1 with unequal
/// padding, and a stride larger than the filter (outputs that skip input pixels).
#[test]
fn shared_filter_matches_the_convolution_of_padded_maps() {
    for (dims, k, stride, pad) in [
        ([2, 3, 8, 8], 4, 2, [1, 1, 1, 1]),
        ([1, 2, 7, 9], 4, 2, [1, 2, 1, 2]),
        ([2, 2, 6, 5], 3, 1, [1, 1, 0, 2]),
        ([1, 3, 9, 7], 2, 3, [0, 0, 1, 0]),
    ] {
        let x = rnd(&dims, 20);
        let kernel = rnd(&[1, 1, k, k], 21).as_detached_tensor();
        let taps = kernel.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let name = format!("{dims:?} k{k} s{stride} pad {pad:?}");
        assert_matches(
            &name,
            &[&x],
            |t| super::shared_filter2d(&t[0], &taps, stride, pad).unwrap(),
            |t| {
                let [b, c, _, _] = dims;
                let padded = t[0].pad_with_zeros(2, pad[0], pad[1]).unwrap().pad_with_zeros(3, pad[2], pad[3]).unwrap();
                let (_, _, hp, wp) = padded.dims4().unwrap();
                let maps = padded.reshape((b * c, 1, hp, wp)).unwrap();
                let y = crate::nn::conv2d_im2col(&maps, &kernel, None, stride, 0).unwrap();
                let (_, _, oh, ow) = y.dims4().unwrap();
                y.reshape((b, c, oh, ow)).unwrap()
            },
        );
    }
}

/// The filter op serves tracked inputs with a constant filter only: an untracked input, or a filter that is
/// itself trained (whose gradient the op does not compute), is left to the composed form.
#[test]
fn shared_filter_serves_tracked_inputs_and_constant_filters_only() {
    let x = rnd(&[1, 2, 6, 6], 22);
    let kernel = rnd(&[1, 1, 4, 4], 23);
    let pad = [1, 1, 1, 1];
    assert!(crate::nn::shared_filter2d(&x, kernel.as_tensor(), 2, pad).unwrap().is_none());
    assert!(crate::nn::shared_filter2d(&x.as_detached_tensor(), &kernel.as_detached_tensor(), 2, pad)
        .unwrap()
        .is_none());
    let y = crate::nn::shared_filter2d(x.as_tensor(), &kernel.as_detached_tensor(), 2, pad).unwrap().unwrap();
    assert_eq!(y.dims(), &[1, 2, 3, 3]);
    assert!(y.track_op());
}

/// candle-nn's composed GroupNorm (biased variance), the reference the op replaces.
fn composed_group_norm(t: &[Tensor], groups: usize, eps: f64) -> Tensor {
    let c = t[0].dim(1).unwrap();
    let gn = candle_nn::GroupNorm::new(t[1].clone(), t[2].clone(), c, groups, eps).unwrap();
    candle_core::Module::forward(&gn, &t[0]).unwrap()
}

/// GroupNorm's forward and its input's, weight's and bias's gradients equal the composed form's: several
/// channels a group, one channel a group, a 3-D input; values shifted off zero so the mean matters.
#[test]
fn group_norm_matches_composed() {
    for (dims, groups) in [(vec![2, 8, 5, 7], 4), (vec![1, 6, 3, 3], 6), (vec![2, 4, 10], 2)] {
        let x = Var::from_tensor(&rnd(&dims, 30).as_tensor().affine(3.0, 0.5).unwrap()).unwrap();
        let (w, b) = (rnd(&[dims[1]], 31), rnd(&[dims[1]], 32));
        assert_matches(
            &format!("group_norm {dims:?} / {groups}"),
            &[&x, &w, &b],
            |t| super::group_norm(&t[0], &t[1], &t[2], groups, 1e-5, Activation::None).unwrap(),
            |t| composed_group_norm(t, groups, 1e-5),
        );
    }
}

/// GroupNorm with its activation in the node: SiLU as the composed GroupNorm then candle's SiLU (within rounding:
/// another exp); LeakyReLU bit for bit as this GroupNorm node then the LeakyReLU node, forward and gradients.
#[test]
fn group_norm_with_activation_matches_the_two_nodes() {
    let dims = [2, 8, 6, 7];
    let x = Var::from_tensor(&rnd(&dims, 40).as_tensor().affine(3.0, 0.5).unwrap()).unwrap();
    let (w, b) = (rnd(&[8], 41), rnd(&[8], 42));
    assert_matches(
        "group_norm + silu",
        &[&x, &w, &b],
        |t| super::group_norm(&t[0], &t[1], &t[2], 4, 1e-6, Activation::Silu).unwrap(),
        |t| candle_nn::ops::silu(&composed_group_norm(t, 4, 1e-6)).unwrap(),
    );
    let fused = |t: &[Tensor]| super::group_norm(&t[0], &t[1], &t[2], 4, 1e-5, Activation::LeakyRelu(0.1)).unwrap();
    let two = |t: &[Tensor]| {
        let y = super::group_norm(&t[0], &t[1], &t[2], 4, 1e-5, Activation::None).unwrap();
        super::leaky_relu(&y, 0.1).unwrap()
    };
    // Values at the tie (a norm output of exactly 0) as well: a weight of 0 makes a whole channel the bias, 0.
    let mask = Tensor::new(&[1f32, 0., 1., 1., 1., 1., 1., 1.], &Device::Cpu).unwrap();
    let (w0, b0) = [&w, &b].map(|v| Var::from_tensor(&v.as_tensor().mul(&mask).unwrap()).unwrap()).into();
    let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let bits = |t: &Tensor| values(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let (y, gs) = forward_backward(&[&x, &w0, &b0], fused);
    let (y_ref, gs_ref) = forward_backward(&[&x, &w0, &b0], two);
    assert_eq!(bits(&y), bits(&y_ref), "group_norm + leaky_relu forward");
    assert!(values(&y).contains(&0.0), "no tie tested");
    for (i, (g, g_ref)) in gs.iter().zip(&gs_ref).enumerate() {
        assert_eq!(bits(g), bits(g_ref), "group_norm + leaky_relu: gradient of input {i}");
    }
}

/// Frozen affine (the frozen discriminator's view): the input's gradient still equals the composed form's and
/// the weight and bias get none; a frozen input with a trained affine: only the affine's.
#[test]
fn group_norm_gradients_of_frozen_operands_are_not_made() {
    let x = rnd(&[2, 6, 4, 5], 33);
    let (w, b) = (rnd(&[6], 34), rnd(&[6], 35));
    let r = rnd(&[2, 6, 4, 5], 36).as_detached_tensor();
    let run = |x: &Tensor, w: &Tensor, b: &Tensor, op: bool| {
        let t = [x.clone(), w.clone(), b.clone()];
        let y = if op {
            super::group_norm(x, w, b, 3, 1e-6, Activation::None).unwrap()
        } else {
            composed_group_norm(&t, 3, 1e-6)
        };
        (&y * &r).unwrap().sum_all().unwrap().backward().unwrap()
    };
    let (wd, bd) = (w.as_detached_tensor(), b.as_detached_tensor());
    let (got, want) = (run(&x, &wd, &bd, true), run(&x, &wd, &bd, false));
    assert!(got.get(&wd).is_none() && got.get(&bd).is_none());
    assert!(rel_err(got.get(&x).unwrap(), want.get(&x).unwrap()) < 1e-5);
    let xd = x.as_detached_tensor();
    let (got, want) = (run(&xd, &w, &b, true), run(&xd, &w, &b, false));
    assert!(got.get(&xd).is_none());
    for v in [&w, &b] {
        assert!(rel_err(got.get(v).unwrap(), want.get(v).unwrap()) < 1e-5);
    }
}

/// `zeros` writes every value it hands out, around its chunk size and after a freed buffer of ones of the same
/// size (which the allocator may hand back).
#[test]
fn zeros_are_zero_after_reused_memory() {
    for len in [0, 1, super::ZEROS_CHUNK, super::ZEROS_CHUNK + 1, 3 * super::ZEROS_CHUNK - 7, 1 << 22] {
        drop(std::hint::black_box(vec![1f32; len]));
        let z = super::zeros(len);
        assert_eq!(z.len(), len);
        assert!(z.iter().all(|&v| v.to_bits() == 0), "len {len}");
    }
}
