//! How the process's allocator treats the memory our work frees. Only glibc needs telling (musl, macOS and
//! Windows return large blocks themselves and keep small ones); every function here is a no-op elsewhere.
//!
//! glibc serves a block above its mmap threshold with a mapping of its own and unmaps it on free, and hands an
//! arena's free top back to the kernel once it passes the trim threshold. The mmap threshold starts at 128 KiB
//! and rises only when a mapped block is freed (up to 32 MiB, the trim threshold to twice that), so which
//! activations a forward pass maps afresh, unmaps and page-faults in again on the next call depended on the
//! order of earlier frees. Two settings follow from what a caller holds:
//! - a trainer: [`KeepFreedMemory`], glibc's thresholds fixed at their ceiling ([`keep_large_blocks`]), arena
//!   tops not trimmed and threads' arena heaps not unmapped while it lives, since a step frees and reallocates
//!   nearly everything it touched;
//! - a loaded model: [`ReturnMemoryOnDrop`], everything free handed back when it drops.
//!
//! A process started with thresholds of its own (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`,
//! `MALLOC_TOP_PAD_` or `GLIBC_TUNABLES`, which glibc reads at startup only) keeps them: nothing here changes them
//! then.
//!
//! `mallopt` is documented MT-unsafe: it locks the main arena only, while other threads' malloc and free read
//! the thresholds without a lock. Each is one word, and a thread that reads the old value merely applies the old
//! policy to one block, so changing them while other threads allocate is harmless.

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
/// example took ~5. Fixed thresholds make the quiet state the only one, at glibc's own bound on an arena's free
/// top (64 MiB). Done once, by the first trainer. Not by inference's pools: memory freed after a model's
/// `malloc_trim` (on dispose) then stays resident up to that bound, and loading and disposing a ~200 MB model
/// twice left 0.27x its weights resident in one of two runs (`__test__/memory-load.spec.ts`, at most 0.2x).
pub fn keep_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if !set_by_user() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            set_thresholds(TRIM_THRESHOLD as libc::c_int);
        });
    }
}

/// Held by a trainer while it lives: arena tops are not trimmed, so the activations and gradients a step frees (16 MiB
/// each for the stage-2 discriminator at batch 2) serve the next step instead of being faulted in and cleared by
/// the kernel again (~19K page faults and 12-13% of the discriminator step's CPU time on one thread, in perf).
/// When the last holder drops, the trim threshold goes back to [`TRIM_THRESHOLD`] and the free memory is handed
/// back.
///
/// The trim threshold covers the main arena and the top of a thread's arena, but not a thread's arena's heaps
/// (64 MiB mappings, glibc's `HEAP_MAX_SIZE`): one left wholly free is unmapped on the next large free unless the
/// arena's top pad ([`KEEP_TOP_PAD`]) covers a whole heap (`heap_trim`). The trainer runs on the compute pool's
/// threads, so with the default 128 KiB pad a stage-2 step at 2 threads still unmapped and faulted in ~19K pages
/// (~0.9 s of system time in 8 steps); with the pad, ~20, and the peak RSS fell from 431-442 to 348 MiB.
/// A larger pad only reserves address space (glibc maps a heap whole and the kernel backs the pages it touches),
/// though under strict overcommit (`vm.overcommit_memory=2`) a heap's 64 MiB count against the commit limit. Set
/// only where glibc took the mmap threshold (not on 32-bit builds, whose heaps are smaller).
#[derive(Debug)]
#[must_use = "trimming resumes when this drops"]
pub struct KeepFreedMemory(());

/// The top pad while a [`KeepFreedMemory`] lives: a whole heap of a thread's arena (`HEAP_MAX_SIZE`, twice glibc's
/// mmap threshold ceiling on 64-bit), so that an arena never unmaps one of its heaps.
pub const KEEP_TOP_PAD: usize = 2 * MMAP_THRESHOLD;
/// glibc's default top pad (`M_TOP_PAD`, mallopt(3)).
const DEFAULT_TOP_PAD: usize = 128 << 10;

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
                // -1: no trimming (mallopt(3)).
                if set_thresholds(-1) {
                    set_top_pad(KEEP_TOP_PAD);
                }
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
                if !set_by_user() && set_thresholds(TRIM_THRESHOLD as libc::c_int) {
                    set_top_pad(DEFAULT_TOP_PAD);
                }
                return_free_memory();
            }
        }
    }
}

/// Held by whatever owns a loaded model, after the model: when it drops, the memory the model's tensors freed is
/// handed back to the operating system (`malloc_trim(0)`, every arena). From a model's second load on (or from
/// the first with [`keep_large_blocks`]) its tensors come from the heap arenas, and freeing them would leave a
/// whole model resident in the process.
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

/// Whether the process started with thresholds (or a top pad) of its own. Read once: glibc reads these variables
/// at startup only, and reading the environment later would race with threads that write it (Node's `process.env`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_by_user() -> bool {
    static SET: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SET.get_or_init(|| {
        let tunables = std::env::var_os("GLIBC_TUNABLES").unwrap_or_default();
        let tunables = tunables.to_string_lossy();
        std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
            || std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_some()
            || std::env::var_os("MALLOC_TOP_PAD_").is_some()
            || tunables.contains("malloc.mmap_threshold")
            || tunables.contains("malloc.trim_threshold")
            || tunables.contains("malloc.top_pad")
    })
}

/// glibc's top pad at `bytes`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_top_pad(bytes: usize) {
    // SAFETY: mallopt only changes the allocator's parameters (see the module comment on threads).
    unsafe {
        libc::mallopt(libc::M_TOP_PAD, bytes as libc::c_int);
    }
}

/// The mmap threshold at [`MMAP_THRESHOLD`] and the trim threshold at `trim`; whether glibc took them. glibc
/// refuses an mmap threshold above half its heap size (16 MiB on 32-bit builds); the trim threshold is left alone
/// then, since setting it alone would freeze the mmap threshold at its 128 KiB start.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_thresholds(trim: libc::c_int) -> bool {
    // SAFETY: mallopt only changes the allocator's parameters (see the module comment on threads).
    unsafe {
        let accepted = libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1;
        if accepted {
            libc::mallopt(libc::M_TRIM_THRESHOLD, trim);
        }
        accepted
    }
}
