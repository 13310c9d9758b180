//! The one layer of fast CPU kernels, shared by the ViT (`nn::fused`, `nn::ops`) and the VQGAN
//! (`model::maskgit`), and the rules every kernel follows.
//!
//! - **Level.** [`level()`] is the SIMD level a kernel runs at: AVX-512, AVX2+FMA or the build's baseline on
//!   x86-64; NEON on aarch64 (where it is the baseline too). It is detected once per process. `MARVEL_SIMD`
//!   (`baseline`, `avx2`, `avx512`, `neon`), read once at start-up and never written, lowers it, to compare levels
//!   end to end; tests force a level on their own thread with [`forced`].
//! - **Dispatch.** A kernel is a plain Rust body wrapped in [`dispatch!`], which compiles it once per level and
//!   calls the copy for [`level()`]. The body stays portable: the compiler vectorises it for each level's vector
//!   width. Only `sgemm` (AVX-512 intrinsics) is x86-specific, and it too runs only when `level()` says so.
//! - **Math.** Vector-friendly functions (exp, GELU, Φ, tanh, lane-wise sum and max) live in [`math`], once;
//!   `#[inline(always)]` so that each level's copy of a kernel gets them compiled for its features.
//! - **Who may enter.** These kernels record no backward pass, so a tensor under autograd never reaches them:
//!   [`tracked`] is the one test for that, used by every caller that chooses between a kernel and candle's ops.
//!
//! A new kernel joins by: writing its body with `#[inline(always)]` helpers only (anything else runs without
//! the level's features), wrapping it in `kernels::dispatch!`, gating its caller on `!kernels::tracked(..)` (and
//! f32 CPU data), and adding an `at_every_level!` test beside it that compares each level with the baseline.
//!
//! Bits: the kernels fix their summation order (explicit lane arrays, never a reduction the compiler could
//! reorder) and round products with `mul_add` (one FMA instruction on AVX2, AVX-512 and NEON; libm's exactly
//! rounded `fmaf` on a baseline without FMA), so every level gives the same bits; the tests hold them to that.

use std::cell::Cell;
use std::sync::OnceLock;

use candle_core::Tensor;

pub mod math;
mod rows;
#[cfg(target_arch = "x86_64")]
pub(crate) mod sgemm;

pub(crate) use rows::*;

/// Name of the environment variable that lowers the detected level.
pub const SIMD_ENV: &str = "MARVEL_SIMD";

/// A SIMD level, in increasing order of width on x86-64. Every level exists on every target so that code and
/// tests can name them; [`Level::supported`] says which this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The build's target features only (SSE2 on x86-64, NEON on aarch64).
    Baseline,
    /// aarch64 Advanced SIMD: part of the aarch64 baseline, named for what it is.
    Neon,
    /// x86-64 AVX2 with FMA (Haswell, 2013, and later).
    Avx2,
    /// x86-64 AVX-512F (with AVX2 and FMA).
    Avx512,
}

impl Level {
    pub const ALL: [Level; 4] = [Level::Baseline, Level::Neon, Level::Avx2, Level::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Level::Baseline => "baseline",
            Level::Neon => "neon",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run code compiled for the level.
    pub fn supported(self) -> bool {
        match self {
            Level::Baseline => true,
            #[cfg(target_arch = "aarch64")]
            Level::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => std::arch::is_x86_feature_detected!("avx512f") && Level::Avx2.supported(),
            #[allow(unreachable_patterns)] // every level is matched above on some target
            _ => false,
        }
    }
}

/// The widest level this CPU runs, lowered by `MARVEL_SIMD` when that names a level it supports.
fn detect() -> Level {
    let widest = Level::ALL.into_iter().filter(|l| l.supported()).max().unwrap_or(Level::Baseline);
    let Ok(wanted) = std::env::var(SIMD_ENV) else {
        return widest;
    };
    match Level::ALL.into_iter().find(|l| l.name() == wanted.trim()) {
        Some(l) if l.supported() => l.min(widest),
        _ => {
            let names: Vec<_> = Level::ALL.iter().filter(|l| l.supported()).map(|l| l.name()).collect();
            // level() cannot fail, and a wrong value should not pass unnoticed.
            eprintln!(
                "marvel: {SIMD_ENV}={wanted:?} is not a level this CPU runs ({}); using {}",
                names.join(", "),
                widest.name()
            );
            widest
        }
    }
}

thread_local! {
    static FORCED: Cell<Option<Level>> = const { Cell::new(None) };
}

/// The level kernels called from this thread run at. Only ever a level [`Level::supported`] accepts, which is
/// what makes the `unsafe` calls in [`dispatch!`] sound.
#[inline]
pub fn level() -> Level {
    static DETECTED: OnceLock<Level> = OnceLock::new();
    FORCED.with(Cell::get).unwrap_or_else(|| *DETECTED.get_or_init(detect))
}

/// Runs `f` with the kernels it calls *on this thread* at `level` (work it hands to other threads keeps theirs).
/// Panics if the CPU lacks the level: running code compiled for missing features is undefined behaviour.
pub fn forced<R>(level: Level, f: impl FnOnce() -> R) -> R {
    assert!(level.supported(), "this CPU cannot run the {} level", level.name());
    struct Restore(Option<Level>);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCED.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(FORCED.with(|c| c.replace(Some(level))));
    f()
}

/// True when any of `tensors` takes part in a computation whose gradient may be asked for: such tensors never
/// reach the kernels of this layer (nor candle's fused ones), since those record no backward pass.
pub(crate) fn tracked(tensors: &[&Tensor]) -> bool {
    tensors.iter().any(|t| t.track_op())
}

/// Defines `fn $name(args)` that runs `$body` compiled for the [`level()`] of the calling thread. Helpers the
/// body calls must be `#[inline(always)]`, or they run without the level's target features.
macro_rules! dispatch {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            match $crate::nn::kernels::level() {
                #[cfg(target_arch = "x86_64")]
                $crate::nn::kernels::Level::Avx512 => {
                    #[target_feature(enable = "avx512f,avx2,fma")]
                    unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                    // SAFETY: level() only reports levels the CPU supports.
                    unsafe { avx512($($arg),*) }
                }
                #[cfg(target_arch = "x86_64")]
                $crate::nn::kernels::Level::Avx2 => {
                    #[target_feature(enable = "avx2,fma")]
                    unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                    // SAFETY: as above.
                    unsafe { avx2($($arg),*) }
                }
                #[cfg(target_arch = "aarch64")]
                $crate::nn::kernels::Level::Neon => {
                    #[target_feature(enable = "neon")]
                    unsafe fn neon($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                    // SAFETY: as above.
                    unsafe { neon($($arg),*) }
                }
                _ => body($($arg),*),
            }
        }
    };
}
pub(crate) use dispatch;

/// Test functions `baseline`, `neon`, `avx2` and `avx512` in a module `$name`, each running `$check(level)` with
/// the kernels forced to that level. A level the build host's CPU lacks (or any x86 level in a cross build, where
/// the host says nothing about the target) is compiled as ignored with the reason, so it shows as skipped, never
/// as passed. `build.rs` sets the `marvel_host_*` cfgs.
#[cfg(test)]
macro_rules! at_every_level {
    ($name:ident, $check:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use $crate::nn::kernels::{forced, Level};

            fn run(level: Level) {
                assert!(level.supported(), "the build host had {level:?} but the CPU running the tests lacks it");
                let check: fn(Level) = $check;
                forced(level, || check(level));
            }

            #[test]
            fn baseline() {
                run(Level::Baseline)
            }

            #[test]
            #[cfg_attr(not(target_arch = "aarch64"), ignore = "NEON: not an aarch64 build")]
            fn neon() {
                run(Level::Neon)
            }

            #[test]
            #[cfg_attr(not(marvel_host_avx2), ignore = "AVX2+FMA: the build host lacks it, or this is a cross build")]
            fn avx2() {
                run(Level::Avx2)
            }

            #[test]
            #[cfg_attr(not(marvel_host_avx512), ignore = "AVX-512: the build host lacks it, or this is a cross build")]
            fn avx512() {
                run(Level::Avx512)
            }
        }
    };
}
#[cfg(test)]
pub(crate) use at_every_level;

/// `f()` at the baseline level and at `level`, for tests that hold a kernel to the baseline's result.
#[cfg(test)]
pub(crate) fn at_baseline_and<R>(level: Level, f: impl Fn() -> R) -> (R, R) {
    (forced(Level::Baseline, &f), forced(level, &f))
}

/// Asserts two kernel outputs are the same bits (see the module comment for why every level must agree).
#[cfg(test)]
pub(crate) fn assert_same_bits(level: Level, baseline: &[f32], got: &[f32], what: &str) {
    assert_eq!(baseline.len(), got.len(), "{what}: lengths differ");
    for (i, (b, g)) in baseline.iter().zip(got).enumerate() {
        assert_eq!(b.to_bits(), g.to_bits(), "{what} at {level:?}, index {i}: {g} vs baseline {b}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forcing_is_scoped_to_the_thread_and_the_call() {
        let before = level();
        forced(Level::Baseline, || {
            assert_eq!(level(), Level::Baseline);
            // Another thread keeps the process level.
            assert_eq!(std::thread::spawn(level).join().unwrap(), before);
        });
        assert_eq!(level(), before);
        assert!(level().supported());
    }

    #[test]
    fn a_level_the_cpu_lacks_cannot_be_forced() {
        let missing = Level::ALL.into_iter().find(|l| !l.supported()).expect("no CPU runs both x86 and NEON");
        let err = std::panic::catch_unwind(|| forced(missing, || ())).unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.contains(missing.name()), "{msg}");
    }

    #[test]
    fn the_tracked_predicate_sees_variables_and_what_derives_from_them() {
        let dev = candle_core::Device::Cpu;
        let var = candle_core::Var::new(&[1f32, 2.], &dev).unwrap();
        let plain = Tensor::new(&[1f32, 2.], &dev).unwrap();
        assert!(tracked(&[&plain, var.as_tensor()]));
        assert!(tracked(&[&(var.as_tensor() + 1.0).unwrap()]));
        assert!(!tracked(&[&plain, &var.as_detached_tensor()]));
    }
}
