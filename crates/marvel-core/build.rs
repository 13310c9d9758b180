// Parity tests need the shared fixtures ($MARVEL_PARITY_DIR, else ../shared/parity). When the folder is missing they
// are compiled as ignored, with the reason in the ignore message, instead of passing vacuously. The same holds for
// the SIMD level tests (`nn::kernels::at_every_level!`): a level this CPU lacks is compiled as ignored.
use std::path::PathBuf;

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
