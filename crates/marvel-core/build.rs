// Parity tests need the shared fixtures ($MARVEL_PARITY_DIR, else ../shared/parity). When the folder is missing they
// are compiled as ignored, with the reason in the ignore message, instead of passing vacuously. The same holds for
// the SIMD level tests (`nn::kernels::at_every_level!`): a level this CPU lacks is compiled as ignored.
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    host_simd_cfgs();
    println!("cargo::rustc-check-cfg=cfg(marvel_parity)");
    println!("cargo::rerun-if-env-changed=MARVEL_PARITY_DIR");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let dir = std::env::var_os("MARVEL_PARITY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../../../shared/parity"));
    // Watch the folder in use (its README marks it complete), not the default one when the variable points
    // elsewhere: the cfg must flip when that folder appears or goes.
    println!("cargo::rerun-if-changed={}", dir.join("README.md").display());
    if dir.join("README.md").is_file() {
        println!("cargo::rustc-cfg=marvel_parity");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        compile_kernels(&manifest.join("kernels"));
    }
}

/// The fused LFQ kernels as PTX for `CUDA_COMPUTE_CAP` (the driver JIT-compiles PTX for the GPU it finds, so PTX
/// for 80 also runs on Hopper; for 90 it runs on Hopper and later). Each file is also assembled by ptxas for that
/// exact architecture, so a kernel that does not fit the chip (registers, shared memory) fails here, not at load.
fn compile_kernels(dir: &Path) {
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo::rerun-if-env-changed=CUDA_HOME");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| {
        panic!("the cuda feature needs CUDA_COMPUTE_CAP (90 for H100/H200, 80 for portable PTX); see scripts/cuda-toolchain.sh")
    });
    let cap: u32 = cap.trim().parse().unwrap_or_else(|_| panic!("CUDA_COMPUTE_CAP={cap:?} is not a number like 90"));
    let bin = |tool: &str| match std::env::var_os("CUDA_HOME") {
        Some(home) => PathBuf::from(home).join("bin").join(tool),
        None => PathBuf::from(tool),
    };
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    for name in ["lfq_codes", "lfq_entropy"] {
        let src = dir.join(format!("{name}.cu"));
        println!("cargo::rerun-if-changed={}", src.display());
        let ptx = out.join(format!("{name}.ptx"));
        // No --use_fast_math: the kernels must round like the CPU path (exact f32 sums, IEEE f64 exp and log).
        run(Command::new(bin("nvcc"))
            .args(["--ptx", "-O3", "-std=c++17", &format!("-arch=compute_{cap}"), "-o"])
            .arg(&ptx)
            .arg(&src));
        run(Command::new(bin("ptxas"))
            .arg(format!("-arch=sm_{cap}"))
            .arg("-o")
            .arg(out.join(format!("{name}.cubin")))
            .arg(&ptx));
    }
}

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is the CUDA toolkit on PATH or in CUDA_HOME?)"));
    assert!(status.success(), "{cmd:?} failed with {status}");
}

/// `marvel_host_avx2` / `marvel_host_avx512` when the build runs on the CPU the tests will run on as far as a
/// build script can tell: an x86-64 host building for itself. A build script runs on the host, so in a cross build
/// its CPU says nothing about the target's, and the x86 level tests are then compiled as ignored.
fn host_simd_cfgs() {
    println!("cargo::rustc-check-cfg=cfg(marvel_host_avx2)");
    println!("cargo::rustc-check-cfg=cfg(marvel_host_avx512)");
    let native = std::env::var("HOST").ok() == std::env::var("TARGET").ok();
    #[cfg(target_arch = "x86_64")]
    if native {
        let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
        if avx2 {
            println!("cargo::rustc-cfg=marvel_host_avx2");
        }
        if avx2 && std::arch::is_x86_feature_detected!("avx512f") {
            println!("cargo::rustc-cfg=marvel_host_avx512");
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = native;
}
