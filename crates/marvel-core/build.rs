// Parity tests need the shared fixtures (../shared/parity or $MARVEL_PARITY_DIR). When neither exists they are
// compiled as ignored, with the reason in the ignore message, instead of passing vacuously.
use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(marvel_parity)");
    println!("cargo::rerun-if-env-changed=MARVEL_PARITY_DIR");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let default = manifest.join("../../../shared/parity");
    println!("cargo::rerun-if-changed={}", default.display());
    let dir = std::env::var_os("MARVEL_PARITY_DIR").map(PathBuf::from).unwrap_or(default);
    if dir.join("README.md").is_file() {
        println!("cargo::rustc-cfg=marvel_parity");
    }
}
