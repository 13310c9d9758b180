//! Helpers shared by the bench examples (`#[path = "common/mod.rs"] mod common;`): timing and memory readings.
#![allow(dead_code)]

use std::time::Instant;

/// Median seconds of `runs` calls of `f` after one warm-up call.
pub fn median_secs(runs: usize, mut f: impl FnMut()) -> f64 {
    try_median_secs(runs, || {
        f();
        Ok(())
    })
    .expect("an infallible call")
}

/// [`median_secs`] of a fallible call; the first error stops the timing.
pub fn try_median_secs(runs: usize, mut f: impl FnMut() -> marvel_core::Result<()>) -> marvel_core::Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(t[runs / 2])
}

/// This process's CPU time, all threads, in seconds (Linux with glibc, where marvel-core links libc): on a shared
/// machine it moves less with the other processes' load than the wall time. None elsewhere.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn cpu_seconds() -> Option<f64> {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec to write.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) } == 0;
    ok.then_some(t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn cpu_seconds() -> Option<f64> {
    None
}

/// A /proc/self/status memory field in MiB: `VmHWM` (peak resident set size) or `VmRSS` (now); NaN elsewhere.
pub fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Runs `run` on marvel's compute pool with `threads` threads and prints its JSON, or the error and exit code 1.
pub fn run_bench(name: &str, threads: usize, run: impl FnOnce() -> marvel_core::Result<String> + Send) {
    let out =
        marvel_core::runtime::set_num_threads(threads).and_then(|_| marvel_core::runtime::install(run)).and_then(|r| r);
    match out {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::exit(1);
        }
    }
}
