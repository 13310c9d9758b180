//! glibc's thresholds are process-wide, and other tests (their pools, trainers and dropped models) move them and
//! trim the arenas: this check runs in a process of its own, as the only test of its binary.

/// A freed block below the mmap threshold is reused without faulting its pages in again: the second of two
/// same-sized buffers costs few page faults (all 6,144 of its pages when glibc starts at its 128 KiB default
/// and maps every such block afresh).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_freed_activation_sized_block_is_reused_without_page_faults() {
    marvel_core::memory::keep_large_blocks();
    let faults = || {
        // SAFETY: an all-zero rusage is a valid value to overwrite.
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
