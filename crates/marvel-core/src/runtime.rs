//! Compute threads. Every job runs inside a rayon pool of our own, so the thread count can change at run time
//! (rayon's global pool cannot be resized once built). A job takes the pool current when it starts and keeps it
//! to the end: `set_num_threads` builds a new pool for later jobs, and the old one lives until its last job is
//! done, so a job never sees its thread count change.
//!
//! The process environment is never written: `setenv` races with every other thread that reads it (C code in
//! sharp, the resolver), which is undefined behaviour. Everything splits by the pool it runs on: our own products
//! (`nn::fused`, `nn::ops`, the VQGAN's Winograd convolutions: nearly all of inference's work), and candle's CPU
//! matmul and elementwise ops, which upstream size themselves once per process from `RAYON_NUM_THREADS` /
//! `CANDLE_NUM_THREADS` or the core count, the elementwise ones on a pool of candle's own whose threads spin
//! between calls; our copy of candle-core (`vendor/candle-core`, see its PATCH.md) runs both on the caller's pool.
//!
//! Default: the number of physical cores, overridable with `MARVEL_NUM_THREADS`.

use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{MarvelError, Result};

pub const THREADS_ENV: &str = "MARVEL_NUM_THREADS";

struct Pool {
    threads: usize,
    pool: Arc<rayon::ThreadPool>,
}

fn pool_cell() -> &'static Mutex<Option<Pool>> {
    static POOL: OnceLock<Mutex<Option<Pool>>> = OnceLock::new();
    POOL.get_or_init(|| Mutex::new(None))
}

/// Threads used when nothing was set: `MARVEL_NUM_THREADS` if it parses as a positive integer, else the number
/// of physical cores (hyper-threads share the FMA units that sgemm saturates, so they add little).
pub fn default_num_threads() -> Result<usize> {
    match std::env::var(THREADS_ENV) {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(MarvelError::InvalidArgument(format!("{THREADS_ENV}={v:?} is not a positive integer"))),
        },
        Err(_) => Ok(num_cpus::get_physical().max(1)),
    }
}

fn build(threads: usize) -> Result<Pool> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("marvel-compute-{i}"))
        .build()
        .map_err(|e| MarvelError::InvalidArgument(format!("cannot start {threads} compute threads: {e}")))?;
    Ok(Pool { threads, pool: Arc::new(pool) })
}

fn current_pool() -> Result<Arc<rayon::ThreadPool>> {
    let mut guard = pool_cell().lock().unwrap_or_else(|p| p.into_inner());
    if guard.is_none() {
        *guard = Some(build(default_num_threads()?)?);
    }
    Ok(guard.as_ref().map(|p| p.pool.clone()).expect("pool initialised above"))
}

/// Number of compute threads jobs run on now.
pub fn num_threads() -> Result<usize> {
    let _ = current_pool()?;
    let guard = pool_cell().lock().unwrap_or_else(|p| p.into_inner());
    Ok(guard.as_ref().map(|p| p.threads).unwrap_or(1))
}

/// Replace the compute pool with one of `threads` threads, for jobs that start from now on. Jobs already running
/// finish on the old pool, with its thread count.
pub fn set_num_threads(threads: usize) -> Result<()> {
    if threads == 0 || threads > 1024 {
        return Err(MarvelError::InvalidArgument(format!(
            "number of threads must be between 1 and 1024, got {threads}"
        )));
    }
    let mut guard = pool_cell().lock().unwrap_or_else(|p| p.into_inner());
    if guard.as_ref().map(|p| p.threads) != Some(threads) {
        *guard = Some(build(threads)?);
    }
    Ok(())
}

/// Run `f` on the compute pool current now (blocking the calling thread until it returns); `f` keeps that pool,
/// whatever `set_num_threads` does meanwhile.
pub fn install<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T> {
    let pool = current_pool()?;
    Ok(pool.install(f))
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use rayon::prelude::*;

    use super::*;

    /// One test, not several: the pool is process-wide state that parallel tests would change under each other.
    #[test]
    fn jobs_keep_their_thread_count_and_the_environment_is_never_written() {
        let env_before = std::env::var_os("RAYON_NUM_THREADS");
        set_num_threads(3).unwrap();
        assert_eq!(num_threads().unwrap(), 3);
        assert_eq!(install(rayon::current_num_threads).unwrap(), 3);

        // A job in flight while the count changes: it reads its count before and after the change.
        let (started_tx, started_rx) = mpsc::channel();
        let (resume_tx, resume_rx) = mpsc::channel::<()>();
        let job = std::thread::spawn(move || {
            install(move || {
                let before = rayon::current_num_threads();
                started_tx.send(()).unwrap();
                resume_rx.recv().unwrap();
                // Work split across the job's pool sees the same count on every thread.
                let seen: Vec<usize> = (0..64).into_par_iter().map(|_| rayon::current_num_threads()).collect();
                (before, rayon::current_num_threads(), seen)
            })
            .unwrap()
        });
        started_rx.recv().unwrap();
        set_num_threads(2).unwrap();
        assert_eq!(install(rayon::current_num_threads).unwrap(), 2, "a job started after the change");
        resume_tx.send(()).unwrap();
        let (before, after, seen) = job.join().unwrap();
        assert_eq!((before, after), (3, 3), "the job in flight changed its thread count");
        assert!(seen.iter().all(|&n| n == 3), "{seen:?}");

        assert_eq!(std::env::var_os("RAYON_NUM_THREADS"), env_before, "RAYON_NUM_THREADS was written");
        set_num_threads(1).unwrap();
        assert_eq!(install(rayon::current_num_threads).unwrap(), 1);
        assert!(matches!(set_num_threads(0), Err(MarvelError::InvalidArgument(_))));
        assert_eq!(std::env::var_os("RAYON_NUM_THREADS"), env_before, "RAYON_NUM_THREADS was written");
    }

    /// candle's elementwise ops on large tensors run on the job's pool: upstream, the first one starts candle's
    /// own pool (threads named `candle-bp-N`, one fewer than the cores), which no thread setting of ours reaches.
    #[cfg(target_os = "linux")]
    #[test]
    fn candle_elementwise_ops_start_no_threads_of_their_own() {
        use candle_core::{Device, Tensor};
        let n = 1 << 20; // above candle's 64K-element threshold for splitting an elementwise op
        let a = Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap();
        let sum = install(|| (&a + &a).unwrap().exp().unwrap().sum_all().unwrap()).unwrap();
        assert!(sum.to_scalar::<f32>().unwrap().is_infinite(), "exp of large values overflows");
        let doubled = install(|| (&a + &a).unwrap()).unwrap().to_vec1::<f32>().unwrap();
        assert!(doubled.iter().enumerate().all(|(i, &v)| v == 2.0 * i as f32));
        let names: Vec<String> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .collect();
        assert!(!names.iter().any(|n| n.starts_with("candle-bp")), "{names:?}");
    }
}
