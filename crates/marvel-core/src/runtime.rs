//! Compute threads. candle's CPU kernels run on rayon and size their gemm split from `RAYON_NUM_THREADS`;
//! we run every job inside a rayon pool of our own so the thread count can change at run time (rayon's global
//! pool cannot be resized once built) and keep that variable in step with it.
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
            _ => Err(MarvelError::InvalidArgument(format!(
                "{THREADS_ENV}={v:?} is not a positive integer"
            ))),
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
    // candle reads this on every matmul to choose its gemm parallelism.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
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

/// Replace the compute pool with one of `threads` threads. Jobs already running finish on the old pool.
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

/// Run `f` on the compute pool (blocking the calling thread until it returns).
pub fn install<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T> {
    let pool = current_pool()?;
    Ok(pool.install(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_read_back_threads() {
        set_num_threads(3).unwrap();
        assert_eq!(num_threads().unwrap(), 3);
        assert_eq!(install(rayon::current_num_threads).unwrap(), 3);
        assert_eq!(std::env::var("RAYON_NUM_THREADS").unwrap(), "3");
        set_num_threads(1).unwrap();
        assert_eq!(install(rayon::current_num_threads).unwrap(), 1);
        assert!(matches!(set_num_threads(0), Err(MarvelError::InvalidArgument(_))));
    }
}
