//! How the process's allocator treats the memory a training step frees: kept for the next step while a trainer
//! lives, handed back when it drops.
//!
//! glibc serves a block above its mmap threshold with a mapping of its own and unmaps it on free; the threshold
//! rises to the largest such block freed (up to 32 MiB), after which those blocks come from the heap arenas, but
//! an arena whose free top grows past the trim threshold (twice the mmap threshold) hands it back. A training
//! step frees most of what it allocated (every activation and gradient: 16 MiB each for the stage-2
//! discriminator at batch 2), so each step faulted its memory in again and the kernel cleared it: ~19K page
//! faults and 12-13% of the discriminator step's CPU time on one thread (perf), on the computing threads while
//! the other threads waited. Other allocators (musl, macOS, Windows) are left as they are.

/// From the first call on, blocks of up to 32 MiB (the most glibc allows) come from the arenas, which keep what
/// is freed instead of trimming it; a no-op after the first call and off glibc. Process-wide and not undone:
/// [`return_freed_memory`] hands the free memory back when the training ends.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only changes the allocator's thresholds; it is thread-safe in glibc.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
        });
    }
}

/// Hands the free memory of every arena back to the operating system (`malloc_trim(0)`), which
/// [`keep_freed_memory`] keeps from happening on free.
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is thread-safe in glibc.
    unsafe {
        libc::malloc_trim(0);
    }
}
