//! The figures of all runs (`RESULT` lines, disturbed runs marked) and the
//! table of medians printed at the end.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::cpu::Cpu;
use crate::{Params, BATCH, CONNECTIONS};

/// Figures of all runs, by key, each marked when other load on the machine
/// disturbed its measurement.
#[derive(Debug, Default)]
pub(crate) struct Results {
    values: BTreeMap<&'static str, Vec<(f64, bool)>>,
    /// Applies to the figures added next (see [`Results::mark`]).
    pub(crate) disturbed: bool,
}

impl Results {
    /// Marks the figures added from now on as disturbed (or not), from the CPU
    /// that other processes used during the measurement.
    pub(crate) fn mark(&mut self, before: &Cpu, after: &Cpu, wall: Duration) {
        let others = after.others(before);
        self.disturbed = others > (0.15 * wall.as_secs_f64()).max(0.05);
        if self.disturbed {
            println!(
                "  DISTURBED: other load used {others:.2} CPU s during this {:.2} s measurement; \
                 left out of the medians when an undisturbed run exists",
                wall.as_secs_f64()
            );
        }
    }
    pub(crate) fn add(&mut self, key: &'static str, v: f64) {
        let tag = if self.disturbed { " disturbed" } else { "" };
        println!("RESULT {key} {v:.4}{tag}");
        self.values
            .entry(key)
            .or_default()
            .push((v, self.disturbed));
    }
    /// The figures the table uses: the undisturbed ones when there are any.
    pub(crate) fn used(&self, key: &str) -> Option<(Vec<f64>, usize)> {
        let all = self.values.get(key)?;
        let clean: Vec<f64> = all.iter().filter(|x| !x.1).map(|x| x.0).collect();
        if clean.is_empty() {
            Some((all.iter().map(|x| x.0).collect(), 0))
        } else {
            let left_out = all.len() - clean.len();
            Some((clean, left_out))
        }
    }
    pub(crate) fn median(&self, key: &str) -> Option<f64> {
        let (mut v, _) = self.used(key)?;
        v.sort_by(f64::total_cmp);
        Some(v[v.len() / 2])
    }
    pub(crate) fn spread(&self, key: &str) -> Option<(f64, f64)> {
        let (v, _) = self.used(key)?;
        if v.len() < 2 {
            return None;
        }
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some((lo, hi))
    }
    /// A note on the runs behind a median: left out, or all disturbed.
    pub(crate) fn note(&self, key: &str) -> String {
        let Some(all) = self.values.get(key) else {
            return String::new();
        };
        let bad = all.iter().filter(|x| x.1).count();
        match bad {
            0 => String::new(),
            b if b == all.len() => " [every run disturbed]".into(),
            b => format!(" [{b} disturbed run(s) left out]"),
        }
    }
}

pub(crate) fn fmt_num(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

pub(crate) fn table(p: &Params, r: &Results) -> String {
    let rate = |k: &str| -> String {
        let note = r.note(k);
        match (r.median(k), r.spread(k)) {
            (Some(m), Some((lo, hi))) => {
                format!("{}/s ({}–{}){note}", fmt_num(m), fmt_num(lo), fmt_num(hi))
            }
            (Some(m), None) => format!("{}/s{note}", fmt_num(m)),
            _ => "n/a".into(),
        }
    };
    let millis = |k: &str| -> String {
        let note = r.note(k);
        match (r.median(k), r.spread(k)) {
            (Some(m), Some((lo, hi))) => format!("{m:.3} ms ({lo:.3}–{hi:.3}){note}"),
            (Some(m), None) => format!("{m:.3} ms{note}"),
            _ => "n/a".into(),
        }
    };
    let met = |ok: Option<bool>| match ok {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "n/a",
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let fr = |x: Option<f64>| x.map_or("—".to_string(), |x| format!("{x:.2}×"));
    let m = |k: &str| r.median(k);
    let fsync_floor = match (m("fsync_inplace_p50_ms"), m("fsync_append_p50_ms")) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut rows: Vec<[String; 6]> = Vec::new();
    let w = p.workers;
    rows.push([
        format!(
            "durable submits, 1 job/request, sequential, 1 connection ({} requests)",
            fmt_num(p.seq_submits as f64)
        ),
        rate("seq_submits_per_s"),
        fsync_floor.map_or("n/a".into(), |f| {
            format!("{}/s (1 / fsync p50)", fmt_num(1e3 / f))
        }),
        fr(ratio(m("seq_submits_per_s"), fsync_floor.map(|f| 1e3 / f))),
        "—".into(),
        "—".into(),
    ]);
    let batch = m("batch_submits_per_s");
    rows.push([
        format!(
            "durable submits, batches of {} ({} jobs)",
            fmt_num(BATCH as f64),
            fmt_num(p.batch_jobs as f64)
        ),
        rate("batch_submits_per_s"),
        "—".into(),
        "—".into(),
        "≥ 100,000/s".into(),
        met(batch.map(|b| b >= 100_000.0)).into(),
    ]);
    rows.push([
        format!(
            "durable submits, 1 job/request, {CONNECTIONS} connections ({} jobs)",
            fmt_num(p.conc_jobs as f64)
        ),
        rate("conc_submits_per_s"),
        "—".into(),
        "—".into(),
        "—".into(),
        "—".into(),
    ]);
    let lat = m("lat_p50_ms");
    rows.push([
        format!(
            "no-op job submit → completion, p50 ({} sequential jobs, fsync included)",
            fmt_num(p.lat_jobs as f64)
        ),
        millis("lat_p50_ms"),
        fsync_floor.map_or("n/a".into(), |f| format!("{f:.3} ms (one fsync, p50)")),
        fr(ratio(lat, fsync_floor)),
        "≤ 1 ms".into(),
        met(lat.map(|l| l <= 1.0)).into(),
    ]);
    rows.push([
        "no-op job submit → completion, p99".into(),
        millis("lat_p99_ms"),
        "—".into(),
        "—".into(),
        "—".into(),
        "—".into(),
    ]);
    let ex = m("exec_jobvisor_per_s");
    let xr = ratio(ex, m("exec_xargs_per_s"));
    rows.push([
        format!(
            "`exec true` × {} vs `xargs -P {w}`",
            fmt_num(p.exec_jobs as f64)
        ),
        rate("exec_jobvisor_per_s"),
        rate("exec_xargs_per_s"),
        fr(xr),
        "≥ 0.8× (within 20%)".into(),
        met(xr.map(|x| x >= 0.8)).into(),
    ]);
    let pr = ratio(ex, m("exec_parallel_per_s"));
    rows.push([
        format!(
            "`exec true` × {} vs GNU `parallel -j {w}`",
            fmt_num(p.exec_jobs as f64)
        ),
        rate("exec_jobvisor_per_s"),
        rate("exec_parallel_per_s"),
        fr(pr),
        "≥ 2×".into(),
        met(pr.map(|x| x >= 2.0)).into(),
    ]);
    let e = m("e2e_per_s");
    rows.push([
        format!(
            "no-op jobs end to end, batch submit → all results stored ({} jobs)",
            fmt_num(p.e2e_jobs as f64)
        ),
        rate("e2e_per_s"),
        "—".into(),
        "—".into(),
        "≥ 20,000/s".into(),
        met(e.map(|e| e >= 20_000.0)).into(),
    ]);
    rows.push([
        format!(
            "no-op jobs end to end at {} jobs (the batch above)",
            fmt_num(p.batch_jobs as f64)
        ),
        rate("batch_e2e_per_s"),
        "—".into(),
        "—".into(),
        "(≥ 20,000/s)".into(),
        met(m("batch_e2e_per_s").map(|e| e >= 20_000.0)).into(),
    ]);
    let mut out = String::new();
    out.push_str("| workload | jobvisor | anchor | ratio | target | met? |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    for row in rows {
        if row[1] == "n/a" && row[2] == "—" {
            continue;
        }
        out.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    out
}
