//! glibc's settings are process-wide: this check runs in a process of its own, as the only test of its binary.

/// While a trainer's [`KeepFreedMemory`](marvel_core::memory::KeepFreedMemory) lives, the blocks a pool thread
/// frees stay mapped in its arena: on a thread of its own (glibc gives it an arena of 64 MiB heaps), three
/// activation-sized blocks span two heaps; freed and allocated again, they cost few page faults (glibc
/// unmapped the wholly free second heap, and all of its ~6K pages were faulted in again, before the top pad).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_threads_freed_blocks_are_reused_without_page_faults() {
    let keep = marvel_core::memory::KeepFreedMemory::new();
    let taken = std::thread::spawn(|| {
        let faults = || {
            // SAFETY: an all-zero rusage is a valid value to overwrite.
            let mut r: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: `r` is a valid rusage to write; RUSAGE_THREAD counts this thread only.
            assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut r) }, 0);
            r.ru_minflt
        };
        let len = 24 << 20;
        let blocks = || (0..3).map(|_| std::hint::black_box(vec![1u8; len])).collect::<Vec<_>>();
        drop(blocks());
        let before = faults();
        let again = blocks();
        let taken = faults() - before;
        drop(again);
        taken
    })
    .join()
    .unwrap();
    drop(keep);
    let pages = (3 * (24 << 20) / 4096) as i64;
    assert!(taken < pages / 8, "{taken} page faults for blocks of {pages} pages allocated twice");
}
