//! The one way heavy work runs: a napi `Task` on the libuv pool that executes inside marvel's compute pool,
//! catches panics (napi's `Task::compute` has no `catch_unwind`, and an unwinding panic across the FFI
//! boundary would abort Node), and turns core errors into JS `Error`s carrying a stable `code`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use marvel_core::{runtime, MarvelError};
use napi::bindgen_prelude::*;
use napi::{Env, JsError, Task};

/// An error on its way to JavaScript: message plus `MARVEL_*` code.
#[derive(Debug)]
pub struct CodedError {
    pub code: &'static str,
    pub message: String,
}

impl From<MarvelError> for CodedError {
    fn from(e: MarvelError) -> Self {
        CodedError { code: e.code(), message: e.to_string() }
    }
}

impl CodedError {
    /// A `napi::Error` whose JS value is an `Error` with `.code` set to our code (napi's own `Status` enum
    /// cannot carry it, so we build the JS error ourselves and hand napi a reference to it).
    pub fn into_napi(self, env: &Env) -> napi::Error {
        let js = JsError::from(napi::Error::new(self.code.to_string(), self.message.clone()));
        let raw = unsafe { js.into_value(env.raw()) };
        match unsafe { Unknown::from_raw_unchecked(env.raw(), raw) } {
            value => napi::Error::from(value),
        }
    }
}

/// Convert a synchronous core result for a `#[napi]` function that runs on the main thread.
pub fn sync<T>(env: &Env, r: marvel_core::Result<T>) -> napi::Result<T> {
    r.map_err(|e| CodedError::from(e).into_napi(env))
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

type Work<I, T> = Box<dyn FnOnce(&I) -> marvel_core::Result<T> + Send>;

/// A job: its inputs (kept here so JS-owned buffers are released on the main thread when the task is
/// dropped) and the work to run on them.
pub struct Job<I: Send, T: Send> {
    inputs: I,
    work: Option<Work<I, T>>,
}

impl<I: Send + Sync, T: Send> Job<I, T> {
    pub fn new(inputs: I, work: impl FnOnce(&I) -> marvel_core::Result<T> + Send + 'static) -> Self {
        Job { inputs, work: Some(Box::new(work)) }
    }
}

impl<I: Send + Sync, T: Send + ToNapiValue + TypeName + 'static> Task for Job<I, T> {
    type Output = std::result::Result<T, CodedError>;
    type JsValue = T;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let Some(work) = self.work.take() else {
            return Ok(Err(CodedError { code: "MARVEL_INTERNAL", message: "job ran twice".into() }));
        };
        let inputs = &self.inputs;
        let outcome = catch_unwind(AssertUnwindSafe(|| runtime::install(|| work(inputs))));
        Ok(match outcome {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(e))) | Ok(Err(e)) => Err(e.into()),
            Err(payload) => Err(CodedError {
                code: "MARVEL_PANIC",
                message: format!("internal error (Rust panic): {}", panic_message(payload)),
            }),
        })
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<T> {
        output.map_err(|e| e.into_napi(&env))
    }
}
