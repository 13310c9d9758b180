//! The GPU check and benchmark, run on the GPU machine by bench/gpu/run.sh (see bench/gpu/README.md). It checks
//! the CUDA path against the CPU implementation on fresh random inputs (seeded from the clock unless `--seed`),
//! then times it. Every check prints one line; a NaN anywhere fails the check it appears in.
//!
//!     bench_gpu [--seed N] [--quick] [--json OUT.json]
//!
//! 1. Kernels: the fused LFQ pass (ids identical, cum/residuals/codes rel-L2 < 1e-5), the decode kernel and its
//!    device-side range check, the fused entropy and its gradient against their CPU twins (rel-L2 < 1e-5), and the
//!    quantizer's losses and gradient against the composite CPU path.
//! 2. Models: S-128 and L-32 (random weights, the same on both devices) encode and decode against the CPU, f32
//!    (rel-L2 < 1e-5) and bf16 weights (< 1e-2).
//! 3. Training: three `single`-recipe steps on the GPU against the same steps on the CPU.
//! 4. Timing: encode and decode images/s at batch 64 (f32, bf16), training steps/s, and the LFQ pass against the
//!    memory floor (a device copy of the same bytes). The table comes last.

mod checks;
mod kernels;
mod models;
mod timing;
mod train;

use checks::Report;

pub struct Args {
    pub seed: u64,
    pub quick: bool,
    pub json: Option<std::path::PathBuf>,
}

fn parse_args() -> Args {
    let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64);
    let mut a = Args { seed: clock.unwrap_or(1), quick: false, json: None };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seed" => a.seed = it.next().and_then(|v| v.parse().ok()).expect("--seed N"),
            "--quick" => a.quick = true,
            "--json" => a.json = Some(it.next().expect("--json FILE").into()),
            other => panic!("unknown argument {other:?}; usage: bench_gpu [--seed N] [--quick] [--json OUT.json]"),
        }
    }
    a
}

fn main() {
    let args = parse_args();
    let gpu = match marvel_core::device::DeviceSpec::Cuda(0).open() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("bench_gpu: {e}");
            std::process::exit(2);
        }
    };
    println!("bench_gpu: seed {} ({})", args.seed, if args.quick { "quick" } else { "full" });
    let mut report = Report::default();
    kernels::run(&gpu, args.seed, &mut report);
    models::run(&gpu, args.seed, args.quick, &mut report);
    train::run(&gpu, args.seed, args.quick, &mut report);
    timing::run(&gpu, args.seed, args.quick, &mut report);
    report.print_table();
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_json(args.seed)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    std::process::exit(if report.all_passed() { 0 } else { 1 });
}
