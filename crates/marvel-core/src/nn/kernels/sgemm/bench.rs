//! `sgemm_wt` on the TiTok ViTs' batch-1 products, as GFLOP/s per block-size variant, for comparing them on
//! this machine (`bench/python/gemm_shapes.py` times onnxruntime and torch on the same shapes):
//!
//!   cargo test --release -p marvel-core --lib sgemm::bench -- --ignored --nocapture
//!
//! `MARVEL_SGEMM_BLOCKS` lists the variants as KCxNC or `packed` (default: the fitted blocks, the fitted blocks
//! with the weights packed once beforehand, then 128x512, a shallower one); `MARVEL_SGEMM_ROUNDS` the rounds
//! (default 7); `MARVEL_SGEMM_THREADS` the thread counts (default 1,2). Each round runs every variant once, in
//! turn, so that a neighbour's load falls on all of them; the median round is reported. Each model cycles through
//! enough distinct layers (over 64 MB of weights) that its weights come from DRAM, as in a forward pass.
//!
//! Two figures per product: GFLOP/s of wall time, and GFLOP per CPU-second of the process (the threads' CPU time
//! summed: what a neighbour's load does not inflate, while imbalance and spinning between threads still count).

use std::time::Instant;

/// This process's CPU time, all threads, in seconds.
fn cpu_seconds() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec to write.
    assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) }, 0);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

use super::{sgemm_packed, sgemm_wt_in, Blocks, PackedWt};

/// A ViT's products for one block at batch 1: rows = 1 + 256 patches + latent tokens.
struct Vit {
    name: &'static str,
    rows: usize,
    width: usize,
    layers: usize,
}

const VITS: [Vit; 3] = [
    Vit { name: "S-128", rows: 385, width: 512, layers: 6 },
    Vit { name: "L-32", rows: 289, width: 1024, layers: 2 },
    Vit { name: "single", rows: 289, width: 256, layers: 24 },
];

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

#[test]
#[ignore = "a benchmark: prints GFLOP/s, asserts nothing"]
fn gflops_on_vit_shapes() {
    assert!(crate::nn::kernels::Level::Avx512.supported(), "sgemm needs AVX-512");
    let fitted = Blocks::for_this_cpu();
    // `packed`: the fitted blocks with Wᵀ packed once beforehand (`PackedWt`), listed as kc 0.
    let spec = env_or("MARVEL_SGEMM_BLOCKS", &format!("{}x{},packed,128x512", fitted.kc, fitted.nc));
    let variants: Vec<Blocks> = spec
        .split(',')
        .map(|v| {
            if v.trim() == "packed" {
                return Blocks { kc: 0, nc: 0 };
            }
            let (kc, nc) = v.split_once('x').expect("KCxNC");
            Blocks { kc: kc.trim().parse().unwrap(), nc: nc.trim().parse().unwrap() }
        })
        .collect();
    let rounds: usize = env_or("MARVEL_SGEMM_ROUNDS", "7").parse().unwrap();
    let thread_counts: Vec<usize> =
        env_or("MARVEL_SGEMM_THREADS", "1,2").split(',').map(|t| t.trim().parse().unwrap()).collect();
    println!("fitted blocks {fitted:?}; load average {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default());
    for vit in &VITS {
        let d = vit.width;
        // (name, n, k): qkv, attention's output projection, MLP up, MLP down.
        let products = [("qkv", 3 * d, d), ("proj", d, d), ("fc", 4 * d, d), ("c_proj", d, 4 * d)];
        let weights: Vec<Vec<Vec<f32>>> = (0..vit.layers)
            .map(|l| {
                products
                    .iter()
                    .map(|&(_, n, k)| (0..n * k).map(|i| ((i * 31 + l * 7) % 97) as f32 * 0.01 - 0.48).collect())
                    .collect()
            })
            .collect();
        let packed: Vec<Vec<PackedWt>> = weights
            .iter()
            .map(|layer| layer.iter().zip(&products).map(|(w, &(_, n, k))| PackedWt::new(w, n, k)).collect())
            .collect();
        let a: Vec<f32> = (0..vit.rows * 4 * d).map(|i| (i % 89) as f32 * 0.01 - 0.44).collect();
        let mut c = vec![0f32; vit.rows * 4 * d];
        for &threads in &thread_counts {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            // seconds[round][variant][product], wall and CPU
            let mut seconds = vec![vec![[0f64; 4]; variants.len()]; rounds + 1];
            let mut cpu = seconds.clone();
            for (round, round_cpu) in seconds.iter_mut().zip(cpu.iter_mut()) {
                for (v, blocks) in variants.iter().enumerate() {
                    for (layer, layer_packed) in weights.iter().zip(&packed) {
                        for (p, &(_, n, k)) in products.iter().enumerate() {
                            let (t, t_cpu) = (Instant::now(), cpu_seconds());
                            pool.install(|| unsafe {
                                if blocks.kc == 0 {
                                    let (a, c) = (a.as_ptr(), c.as_mut_ptr());
                                    sgemm_packed(vit.rows, a, k, &layer_packed[p], c, n, true, threads);
                                    return;
                                }
                                sgemm_wt_in(
                                    *blocks,
                                    vit.rows,
                                    n,
                                    k,
                                    a.as_ptr(),
                                    k,
                                    layer[p].as_ptr(),
                                    k,
                                    c.as_mut_ptr(),
                                    n,
                                    true,
                                    threads,
                                )
                            });
                            round[v][p] += t.elapsed().as_secs_f64();
                            round_cpu[v][p] += cpu_seconds() - t_cpu;
                        }
                    }
                }
            }
            seconds.remove(0); // warm-up
            cpu.remove(0);
            for (v, blocks) in variants.iter().enumerate() {
                let median = |s: &[Vec<[f64; 4]>], f: &dyn Fn(&[f64; 4]) -> f64| {
                    let mut x: Vec<f64> = s.iter().map(|r| f(&r[v])).collect();
                    x.sort_by(f64::total_cmp);
                    x[x.len() / 2]
                };
                let flops = |p: usize| 2.0 * (vit.rows * products[p].1 * products[p].2 * vit.layers) as f64;
                let variant =
                    if blocks.kc == 0 { "packed".to_string() } else { format!("{}x{}", blocks.kc, blocks.nc) };
                let mut line = format!("{:>6} {threads}t {variant:<8}", vit.name);
                for (p, (name, _, _)) in products.iter().enumerate() {
                    line += &format!(" {name} {:5.1}", flops(p) / median(&seconds, &|r| r[p]) / 1e9);
                }
                let total: f64 = (0..4).map(flops).sum();
                line += &format!(" | all {:5.1} GFLOP/s", total / median(&seconds, &|r| r.iter().sum()) / 1e9);
                line += &format!(" | {:5.1} GFLOP/CPU-s", total / median(&cpu, &|r| r.iter().sum()) / 1e9);
                println!("{line}");
            }
        }
    }
}
