// Parity tests need the shared fixtures ($MARVEL_PARITY_DIR, else ../shared/parity). When the folder is missing they
// are compiled as ignored, with the reason in the ignore message, instead of passing vacuously.
use std::path::PathBuf;

fn main() {
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
