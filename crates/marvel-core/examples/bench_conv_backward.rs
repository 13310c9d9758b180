//! Forward + backward of one 3x3 convolution of the MaskGIT pixel decoder's size, as a training step runs it:
//! marvel's `conv2d_im2col` (backward by gemms) against candle's conv2d (backward by a naive transposed
//! convolution). Gradients of the input and weight are both asked for. Prints JSON (`bench/conv_backward.sh`).
//!
//!     cargo run --release -p marvel-core --example bench_conv_backward -- [--threads 2] [--runs 3]


use candle_core::{Device, Tensor, Var};
use marvel_core::nn::{conv2d_im2col, upsample2x_conv2d_im2col};
use marvel_core::runtime;
#[path = "common/mod.rs"]
mod common;
use common::median_secs;


fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn run(runs: usize) -> candle_core::Result<String> {
    let dev = Device::Cpu;
    let mut rows = Vec::new();
    // The decoder's 3x3 convs at two of its levels, 256 channels at 32x32 and 128 channels at 64x64, and its
    // upsampling conv (nearest x2, then 3x3) from 32x32 to 64x64 at 128 channels. (Its 128-channel convs also run
    // at 128x128 and 256x256; those take too long with candle's backward for a quick bench.)
    for (c, hw, upsample) in [(256usize, 32usize, false), (128, 64, false), (128, 32, true)] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (1, c, hw, hw), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.02, (c, c, 3, 3), &dev)?)?;
        let out = if upsample { 2 * hw } else { hw };
        let m = Tensor::randn(0f32, 1., (1, c, out, out), &dev)?;
        let conv = |ours: bool| -> candle_core::Result<Tensor> {
            match (ours, upsample) {
                (true, false) => conv2d_im2col(&x, &w, None, 1, 1),
                (true, true) => upsample2x_conv2d_im2col(&x, &w, None, 1),
                (false, false) => x.conv2d(&w, 1, 1, 1, 1),
                (false, true) => x.upsample_nearest2d(out, out)?.conv2d(&w, 1, 1, 1, 1),
            }
        };
        let step = |ours: bool| -> candle_core::Result<()> {
            let y = conv(ours)?;
            let grads = y.mul(&m)?.sum_all()?.backward()?;
            assert!(grads.get(&x).is_some() && grads.get(&w).is_some());
            Ok(())
        };
        let forward = |ours: bool| -> candle_core::Result<()> {
            conv(ours)?.sum_all()?.to_scalar::<f32>()?;
            Ok(())
        };
        let t = |f: &dyn Fn(bool) -> candle_core::Result<()>, ours| median_secs(runs, || f(ours).unwrap());
        let (ours_step, candle_step) = (t(&step, true), t(&step, false));
        let (ours_fwd, candle_fwd) = (t(&forward, true), t(&forward, false));
        rows.push(format!(
            "{{\"channels\":{c},\"side\":{hw},\"upsample\":{upsample},\"marvel_step_s\":{ours_step:.4},\"candle_step_s\":{candle_step:.4},\
             \"marvel_forward_s\":{ours_fwd:.4},\"candle_forward_s\":{candle_fwd:.4},\
             \"marvel_backward_s\":{:.4},\"candle_backward_s\":{:.4}}}",
            ours_step - ours_fwd,
            candle_step - candle_fwd
        ));
    }
    Ok(format!(
        "{{\"threads\":{},\"runs\":{runs},\"load_average\":\"{}\",\"results\":[{}]}}",
        runtime::num_threads().unwrap_or(0),
        load_average(),
        rows.join(",")
    ))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut threads, mut runs) = (2usize, 3usize);
    while let Some(a) = args.next() {
        let mut val = || args.next().expect("a value after the flag");
        match a.as_str() {
            "--threads" => threads = val().parse().expect("--threads N"),
            "--runs" => runs = val().parse().expect("--runs N"),
            _ => panic!("usage: bench_conv_backward [--threads N] [--runs N]"),
        }
    }
    let out = runtime::set_num_threads(threads).and_then(|_| runtime::install(|| run(runs).map_err(|e| e.to_string())));
    match out {
        Ok(Ok(json)) => println!("{json}"),
        Ok(Err(e)) => fail(e),
        Err(e) => fail(e.to_string()),
    }
}

fn fail(msg: String) -> ! {
    eprintln!("bench_conv_backward: {msg}");
    std::process::exit(1)
}
