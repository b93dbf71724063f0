//! Figures: percentiles, the table and the JSON document.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::MIB;

/// Milliseconds, sorted.
pub struct Samples(Vec<f64>);

impl Samples {
    pub fn new(mut v: Vec<f64>) -> Samples {
        v.sort_by(f64::total_cmp);
        Samples(v)
    }

    pub fn pct(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (self.0.len() - 1) as f64).round() as usize;
        self.0[i.min(self.0.len() - 1)]
    }

    pub fn p50(&self) -> f64 {
        self.pct(50.0)
    }

    pub fn p99(&self) -> f64 {
        self.pct(99.0)
    }

    pub fn json(&self) -> Value {
        json!({ "n": self.0.len(), "p50_ms": round3(self.p50()), "p99_ms": round3(self.p99()) })
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

pub fn mib(b: u64) -> f64 {
    (b as f64 / MIB as f64 * 10.0).round() / 10.0
}

/// One line of the table.
pub struct Row {
    pub scenario: String,
    pub metric: String,
    pub value: String,
    pub baseline: String,
    pub ratio: String,
}

#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub json: BTreeMap<String, Value>,
}

impl Report {
    pub fn row(
        &mut self,
        scenario: &str,
        metric: &str,
        value: String,
        baseline: &str,
        ratio: &str,
    ) {
        self.rows.push(Row {
            scenario: scenario.into(),
            metric: metric.into(),
            value,
            baseline: baseline.into(),
            ratio: ratio.into(),
        });
    }

    pub fn print(&self) {
        let w = |f: fn(&Row) -> &String, title: &str| {
            self.rows
                .iter()
                .map(|r| f(r).chars().count())
                .max()
                .unwrap_or(0)
                .max(title.len())
        };
        let cols = [
            w(|r| &r.scenario, "scenario"),
            w(|r| &r.metric, "figure"),
            w(|r| &r.value, "value"),
            w(|r| &r.baseline, "baseline (same run)"),
            w(|r| &r.ratio, "ratio"),
        ];
        let line = |a: &str, b: &str, c: &str, d: &str, e: &str| {
            println!(
                "| {a:<w0$} | {b:<w1$} | {c:>w2$} | {d:<w3$} | {e:>w4$} |",
                w0 = cols[0],
                w1 = cols[1],
                w2 = cols[2],
                w3 = cols[3],
                w4 = cols[4]
            );
        };
        line(
            "scenario",
            "figure",
            "value",
            "baseline (same run)",
            "ratio",
        );
        println!(
            "|{}|{}|{}:|{}|{}:|",
            "-".repeat(cols[0] + 2),
            "-".repeat(cols[1] + 2),
            "-".repeat(cols[2] + 1),
            "-".repeat(cols[3] + 2),
            "-".repeat(cols[4] + 1),
        );
        let mut last = String::new();
        for r in &self.rows {
            let s = if r.scenario == last { "" } else { &r.scenario };
            line(s, &r.metric, &r.value, &r.baseline, &r.ratio);
            last = r.scenario.clone();
        }
    }
}

pub fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}x", a / b)
}
