//! The fused LFQ kernels against their CPU twins on fresh random inputs.

use candle_core::{Device, Tensor, Var};
use marvel_core::quantize::lfq::{entropy, fused, LfqConfig, ResidualLfq, SplitMix64};
use marvel_core::Result;

use crate::checks::{rel, rel_l2, Report};

/// Standard normal draws (Box-Muller), scaled.
pub fn normal(rng: &mut SplitMix64, n: usize, scale: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let (u, v) = (rng.next_f64().max(1e-300), rng.next_f64());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos() * scale) as f32
        })
        .collect()
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?)
}

fn ids(t: &Tensor) -> Result<Vec<u32>> {
    Ok(t.flatten_all()?.to_vec1::<u32>()?)
}

pub fn run(gpu: &Device, seed: u64, report: &mut Report) {
    let mut rng = SplitMix64::new(seed ^ 0x6b65726e);
    for (bits, depths, rows) in [(12, 4, 64 * 128), (16, 2, 64 * 32), (32, 3, 4096), (5, 23, 1000), (1, 1, 77)] {
        let name = format!("lfq pass bits {bits} depths {depths} rows {rows}");
        report.check_result(&name, pass(gpu, &mut rng, bits, depths, rows));
    }
    report.check_result("lfq ids with NaN and zero latents", nan_ids(gpu, &mut rng));
    for (bits, depths) in [(12, 4), (32, 2)] {
        report.check_result(&format!("lfq decode bits {bits} depths {depths}"), decode(gpu, &mut rng, bits, depths));
    }
    report.check_result("lfq decode range check on the device", range_check(gpu, &mut rng));
    for (rows, bits, groups, tau, scale) in
        [(8192, 12, 1, 0.01, 0.5), (8192, 12, 2, 0.01, 0.05), (2048, 16, 1, 0.01, 0.3), (4096, 10, 3, 1.0, 1.0)]
    {
        let name = format!("fused entropy rows {rows} bits {bits} groups {groups} tau {tau}");
        report.check_result(&name, entropy_vs_cpu(gpu, &mut rng, rows, bits, groups, tau, scale));
    }
    report.check_result("lfq losses and gradient vs composite CPU path", losses_vs_cpu(gpu, &mut rng));
}

fn pass(gpu: &Device, rng: &mut SplitMix64, bits: usize, depths: usize, rows: usize) -> Result<(bool, String)> {
    let mut z = normal(rng, rows * bits, 1.0);
    for i in (0..z.len()).step_by(97) {
        z[i] = 0.0;
    }
    let (r, q, tokens, cum) = fused::residuals_host(&z, bits, depths);
    let zg = Tensor::from_vec(z, (rows, bits), gpu)?;
    let (rg, pass) = fused::residuals(&zg, bits, depths)?;
    let same_ids = ids(&pass.tokens)? == tokens;
    let q_gpu = pass.q.as_ref().map(host).transpose()?.unwrap_or_default();
    let errs = [rel_l2(&host(&pass.cum)?, &cum), rel_l2(&host(&rg)?, &r), rel_l2(&q_gpu, &q)];
    // The inference pass (no residuals) must give the same cum and ids.
    let inf = fused::quantize_pass(&zg, bits, depths)?;
    let same_inf = ids(&inf.tokens)? == tokens && rel_l2(&host(&inf.cum)?, &cum) == 0.0;
    let ok = same_ids && same_inf && errs.iter().all(|&e| e < 1e-5);
    let errs = errs.map(|e| format!("{e:.2e}")).join("/");
    Ok((ok, format!("ids identical {same_ids}, inference pass identical {same_inf}, rel-L2 cum/r/q {errs}")))
}

fn nan_ids(gpu: &Device, rng: &mut SplitMix64) -> Result<(bool, String)> {
    let (b, n, bits) = (4, 32, 12);
    let mut z = normal(rng, b * n * bits, 1.0);
    for i in (0..z.len()).step_by(13) {
        z[i] = if i % 2 == 0 { f32::NAN } else { 0.0 };
    }
    let lfq = ResidualLfq::from_config(LfqConfig::mdq(bits, 4))?;
    let cpu = lfq.quantize(&Tensor::from_vec(z.clone(), (b, n, bits), &Device::Cpu)?, 4)?;
    let gpu_codes = lfq.quantize(&Tensor::from_vec(z, (b, n, bits), gpu)?, 4)?;
    let same = ids(&gpu_codes.tokens)? == ids(&cpu.tokens)?;
    Ok((same, format!("ids identical {same} (NaN and 0 count as negative on both)")))
}

fn decode(gpu: &Device, rng: &mut SplitMix64, bits: usize, depths: usize) -> Result<(bool, String)> {
    let (b, n, stride) = (64, 32, depths + 1);
    let limit = if bits == 32 { u64::from(u32::MAX) + 1 } else { 1u64 << bits };
    let t: Vec<u32> = (0..b * n * stride).map(|_| rng.below(limit) as u32).collect();
    let lfq = ResidualLfq::from_config(LfqConfig::mdq(bits, stride))?;
    let cpu = lfq.codes_from_tokens(&Tensor::from_vec(t.clone(), (b, n, stride), &Device::Cpu)?, depths)?;
    let got = lfq.codes_from_tokens(&Tensor::from_vec(t, (b, n, stride), gpu)?, depths)?;
    let e = rel_l2(&host(&got)?, &host(&cpu)?);
    Ok((e == 0.0, format!("rel-L2 {e:.2e} (exact sums of powers of two: 0 expected)")))
}

fn range_check(gpu: &Device, rng: &mut SplitMix64) -> Result<(bool, String)> {
    let (b, n, d, bits) = (8, 32, 4, 12);
    let mut t: Vec<u32> = (0..b * n * d).map(|_| rng.below(1 << bits) as u32).collect();
    let at = (rng.below((b * n) as u64) as usize) * d + 2;
    t[at] = 1 << bits;
    // A later bad id in a depth that is not decoded must be ignored by both.
    t[(b * n - 1) * d + 3] = u32::MAX;
    let lfq = ResidualLfq::from_config(LfqConfig::mdq(bits, d))?;
    let cpu = lfq.codes_from_tokens(&Tensor::from_vec(t.clone(), (b, n, d), &Device::Cpu)?, 3);
    let got = lfq.codes_from_tokens(&Tensor::from_vec(t, (b, n, d), gpu)?, 3);
    match (cpu, got) {
        (Err(c), Err(g)) => {
            let same = c.to_string() == g.to_string() && g.code() == "MARVEL_INVALID_ARGUMENT";
            Ok((same, format!("cpu: {c} | gpu: {g}")))
        }
        (c, g) => Ok((false, format!("expected both to refuse: cpu ok {}, gpu ok {}", c.is_ok(), g.is_ok()))),
    }
}

/// (0.7 S - 1.3 A) and its gradient, on `device`, through the fused op or the composite.
fn entropy_loss(
    r: &[f32],
    rows: usize,
    bits: usize,
    groups: usize,
    tau: f64,
    dev: &Device,
    fused_op: bool,
) -> Result<(f64, Vec<f32>)> {
    let v = Var::from_tensor(&Tensor::from_vec(r.to_vec(), (rows, bits), dev)?)?;
    let t = if fused_op {
        fused::entropy_terms_fused(v.as_tensor(), groups, tau, 1.0)?
    } else {
        entropy::entropy_terms(v.as_tensor(), groups, tau, 1.0)?
    };
    let loss = ((&t.per_sample * 0.7)? - (&t.avg * 1.3)?)?;
    let g = loss.backward()?.get(v.as_tensor()).map(host).transpose()?.unwrap_or_default();
    Ok((f64::from(loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?), g))
}

fn entropy_vs_cpu(
    gpu: &Device,
    rng: &mut SplitMix64,
    rows: usize,
    bits: usize,
    groups: usize,
    tau: f64,
    scale: f64,
) -> Result<(bool, String)> {
    let r = normal(rng, rows * bits, scale);
    let (want, want_g) = entropy_loss(&r, rows, bits, groups, tau, &Device::Cpu, true)?;
    let (got, got_g) = entropy_loss(&r, rows, bits, groups, tau, gpu, true)?;
    let (e, eg) = (rel(got, want, 1e-6), rel_l2(&got_g, &want_g));
    let mut detail = format!("loss rel {e:.2e}, gradient rel-L2 {eg:.2e} vs the f64 CPU twin");
    // The composite f32 estimate, where it fits in memory, for information (its own rounding is ~1e-5).
    if entropy::entropy_elements(rows, bits, groups) <= 1 << 24 {
        let (c, cg) = entropy_loss(&r, rows, bits, groups, tau, &Device::Cpu, false)?;
        detail += &format!(
            "; vs the composite CPU estimate: loss rel {:.2e}, gradient rel-L2 {:.2e}",
            rel(got, c, 1e-6),
            rel_l2(&got_g, &cg)
        );
    }
    Ok((e < 1e-5 && eg < 1e-5, detail))
}

fn losses_vs_cpu(gpu: &Device, rng: &mut SplitMix64) -> Result<(bool, String)> {
    let (b, n, bits) = (64, 32, 12);
    let z = normal(rng, b * n * bits, 0.5);
    let mut cfg = LfqConfig::mdq(bits, 4);
    cfg.entropy_groups = Some(2);
    let lfq = ResidualLfq::from_config(cfg)?;
    let run = |dev: &Device| -> Result<(f64, Vec<f32>, Vec<u32>)> {
        let v = Var::from_tensor(&Tensor::from_vec(z.clone(), (b, n, bits), dev)?)?;
        let l = lfq.losses(v.as_tensor(), 4)?;
        let g = l.total.backward()?.get(v.as_tensor()).map(host).transpose()?.unwrap_or_default();
        let t = ids(&lfq.quantize(v.as_tensor(), 4)?.tokens)?;
        Ok((f64::from(l.total.to_scalar::<f32>()?), g, t))
    };
    let (want, want_g, want_t) = run(&Device::Cpu)?;
    let (got, got_g, got_t) = run(gpu)?;
    let (e, eg) = (rel(got, want, 1e-6), rel_l2(&got_g, &want_g));
    // The GPU's entropy is the f64 fused estimate, the CPU's the f32 composite: they agree to the composite's
    // rounding, hence the looser bound here; the kernels themselves are held to 1e-5 above.
    Ok((
        got_t == want_t && e < 1e-4 && eg < 1e-4,
        format!("ids identical {}, total rel {e:.2e}, dL/dz rel-L2 {eg:.2e}", got_t == want_t),
    ))
}
