//! How the process's allocator treats the memory our work frees. Only glibc needs telling (musl, macOS and
//! Windows return large blocks themselves and keep small ones); every function here is a no-op elsewhere.
//!
//! glibc serves a block above its mmap threshold with a mapping of its own and unmaps it on free, and hands an
//! arena's free top back to the kernel once it passes the trim threshold. The mmap threshold starts at 128 KiB
//! and rises only when a mapped block is freed (up to 32 MiB, the trim threshold to twice that), so which
//! activations a forward pass maps afresh, unmaps and page-faults in again on the next call depended on the
//! order of earlier frees. Three settings follow from what a caller holds:
//! - any compute pool: [`keep_large_blocks`], glibc's adaptive thresholds at their ceiling from the start;
//! - a trainer: [`KeepFreedMemory`], no trimming at all while it lives, since a step frees and reallocates
//!   nearly everything it touched;
//! - a loaded model: [`ReturnMemoryOnDrop`], everything free handed back when it drops.
//!
//! A process that sets the thresholds itself (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` or
//! `GLIBC_TUNABLES`) keeps them: nothing here changes them then.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
use std::sync::Mutex;

/// Bytes from which glibc serves a block with its own `mmap` (and unmaps it on free): 32 MiB, the ceiling of
/// glibc's adaptive threshold (`DEFAULT_MMAP_THRESHOLD_MAX` on 64-bit).
pub const MMAP_THRESHOLD: usize = 32 << 20;
/// Free bytes an arena keeps at its top before it returns them to the kernel: twice [`MMAP_THRESHOLD`], the pair
/// glibc's adaptive rule sets.
pub const TRIM_THRESHOLD: usize = 2 * MMAP_THRESHOLD;

/// Starts glibc's allocator where its own adaptive rule ends (mmap threshold 32 MiB, trim threshold 64 MiB)
/// instead of at 128 KiB: the `single` layout's batch-8 encode flipped from one process to the next between ~5
/// and ~5,800 page faults per call (2-2.5 ms of system time per image, ~30 ms of CPU in all), and through Node,
/// where each call enters the pool from a libuv thread, a one-image call took 80-900 faults where the Rust
/// example took ~5. Fixed thresholds make the quiet state the only one, at glibc's own bound: at most 64 MiB of
/// free memory per arena stays resident between calls. Done once, when the first compute pool is built.
pub fn keep_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if !set_by_user() {
                set_thresholds(TRIM_THRESHOLD);
            }
        });
    }
}

/// Held by a trainer while it lives: no arena is trimmed, so the activations and gradients a step frees (16 MiB
/// each for the stage-2 discriminator at batch 2) serve the next step instead of being faulted in and cleared by
/// the kernel again (~19K page faults and 12-13% of the discriminator step's CPU time on one thread, in perf).
/// When the last holder drops, the trim threshold goes back to [`TRIM_THRESHOLD`] and the free memory is handed
/// back.
#[derive(Debug)]
pub struct KeepFreedMemory(());

/// Holders of [`KeepFreedMemory`] alive; the thresholds change only on the first's arrival and the last's leaving.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
static HOLDERS: Mutex<usize> = Mutex::new(0);

impl KeepFreedMemory {
    pub fn new() -> Self {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            keep_large_blocks();
            let mut holders = HOLDERS.lock().unwrap_or_else(|p| p.into_inner());
            if *holders == 0 && !set_by_user() {
                set_thresholds(libc::c_int::MAX as usize);
            }
            *holders += 1;
        }
        Self(())
    }
}

impl Default for KeepFreedMemory {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for KeepFreedMemory {
    fn drop(&mut self) {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            let mut holders = HOLDERS.lock().unwrap_or_else(|p| p.into_inner());
            *holders -= 1;
            if *holders == 0 {
                if !set_by_user() {
                    set_thresholds(TRIM_THRESHOLD);
                }
                return_free_memory();
            }
        }
    }
}

/// Held by whatever owns a loaded model, after the model: when it drops, the memory the model's tensors freed is
/// handed back to the operating system. From a model's second load on (or from the first with
/// [`keep_large_blocks`]) its tensors come from the heap arenas, and freeing them would leave a whole model
/// resident in the process.
#[derive(Debug, Default)]
pub struct ReturnMemoryOnDrop;

impl Drop for ReturnMemoryOnDrop {
    fn drop(&mut self) {
        return_free_memory();
    }
}

/// `malloc_trim(0)`: the free pages of every arena back to the kernel.
fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is thread-safe in glibc.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_by_user() -> bool {
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
        || std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_some()
        || tunables.contains("malloc.mmap_threshold")
        || tunables.contains("malloc.trim_threshold")
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_thresholds(trim: usize) {
    // SAFETY: mallopt only changes the allocator's parameters; glibc takes its own lock for them.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_TRIM_THRESHOLD, trim.min(libc::c_int::MAX as usize) as libc::c_int);
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// A freed block below the mmap threshold is reused without faulting its pages in again: the second of two
    /// same-sized buffers costs few page faults (all 6,144 of its pages when glibc starts at its 128 KiB default
    /// and maps every such block afresh).
    #[test]
    fn a_freed_activation_sized_block_is_reused_without_page_faults() {
        keep_large_blocks();
        let faults = || {
            let mut r: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: `r` is a valid rusage to write; RUSAGE_THREAD counts this thread only.
            assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut r) }, 0);
            r.ru_minflt
        };
        let len = 24 << 20;
        drop(std::hint::black_box(vec![1u8; len]));
        let before = faults();
        let again = std::hint::black_box(vec![1u8; len]);
        let taken = faults() - before;
        drop(again);
        assert!(taken < (len / 4096 / 4) as i64, "{taken} page faults for a {len}-byte buffer allocated twice");
    }
}
