//! What the GPU run records: pass/fail checks with their numbers, and timings.

use serde_json::{json, Value};

pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

pub struct Timing {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    pub note: String,
}

#[derive(Default)]
pub struct Report {
    pub checks: Vec<Check>,
    pub timings: Vec<Timing>,
}

/// ||a - b|| / ||b|| in f64; NaN when either holds a NaN (or the lengths differ), so a NaN never passes `< tol`.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::NAN;
    }
    let (mut num, mut den) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        if x.is_nan() || y.is_nan() {
            return f64::NAN;
        }
        num += (f64::from(x) - f64::from(y)).powi(2);
        den += f64::from(y).powi(2);
    }
    if den == 0.0 {
        return if num == 0.0 { 0.0 } else { f64::INFINITY };
    }
    (num / den).sqrt()
}

/// |a - b| / max(|b|, floor); NaN in, NaN out.
pub fn rel(a: f64, b: f64, floor: f64) -> f64 {
    (a - b).abs() / b.abs().max(floor)
}

impl Report {
    pub fn check(&mut self, name: impl Into<String>, passed: bool, detail: impl Into<String>) {
        let c = Check { name: name.into(), passed, detail: detail.into() };
        println!("[{}] {}: {}", if c.passed { "pass" } else { "FAIL" }, c.name, c.detail);
        self.checks.push(c);
    }

    /// A check that could not run (an error on either side) fails with the error as its detail.
    pub fn check_result(&mut self, name: &str, r: marvel_core::Result<(bool, String)>) {
        match r {
            Ok((passed, detail)) => self.check(name, passed, detail),
            Err(e) => self.check(name, false, format!("error: {e}")),
        }
    }

    pub fn time(&mut self, name: impl Into<String>, value: f64, unit: &'static str, note: impl Into<String>) {
        let t = Timing { name: name.into(), value, unit, note: note.into() };
        println!("[time] {}: {:.4} {} {}", t.name, t.value, t.unit, t.note);
        self.timings.push(t);
    }

    pub fn all_passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    pub fn print_table(&self) {
        let failed: Vec<_> = self.checks.iter().filter(|c| !c.passed).collect();
        println!("\n== bench_gpu summary ==");
        println!("checks: {} passed, {} failed", self.checks.len() - failed.len(), failed.len());
        for c in &failed {
            println!("  FAIL {}: {}", c.name, c.detail);
        }
        println!("{:<44} {:>14}  {}", "timing", "value", "note");
        for t in &self.timings {
            println!("{:<44} {:>10.3} {:<4} {}", t.name, t.value, t.unit, t.note);
        }
    }

    pub fn to_json(&self, seed: u64) -> String {
        let checks: Vec<Value> =
            self.checks.iter().map(|c| json!({"name": c.name, "passed": c.passed, "detail": c.detail})).collect();
        let timings: Vec<Value> = self
            .timings
            .iter()
            .map(|t| json!({"name": t.name, "value": t.value, "unit": t.unit, "note": t.note}))
            .collect();
        serde_json::to_string_pretty(&json!({"seed": seed, "checks": checks, "timings": timings})).unwrap()
    }
}
