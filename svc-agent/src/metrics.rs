//! Prometheus text exposition (format 0.0.4) of the agent's metrics,
//! served on `--metrics-bind-address` at `/metrics`.
//!
//! Names follow kube-proxy's where the meaning is the same, so existing
//! dashboards and alerts keep working (`kubeproxy_sync_proxy_rules_*`);
//! what only this proxy has is `svc_agent_*`.
use std::{fmt::Write as _, time::SystemTime};

/// A cumulative histogram with fixed upper bounds.
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: Vec<f64>,
    /// Observations per bucket (not cumulative); the last is +Inf.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    /// Bounds `start * factor^i` for `i < n`, as Prometheus clients'
    /// ExponentialBuckets (kube-proxy uses 0.001, 2, 15 for sync times).
    pub fn exponential(start: f64, factor: f64, n: usize) -> Self {
        let bounds: Vec<f64> = (0..n).map(|i| start * factor.powi(i as i32)).collect();
        Self {
            counts: vec![0; n + 1],
            bounds,
            sum: 0.0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum += value;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// One sample: label names and values, and the value.
pub type Sample = (Vec<(&'static str, String)>, f64);

/// A sample without labels.
pub fn single(value: f64) -> Vec<Sample> {
    vec![(Vec::new(), value)]
}

/// Builds an exposition, one metric family at a time.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn gauge(&mut self, name: &str, help: &str, samples: &[Sample]) {
        self.family(name, help, "gauge", samples);
    }

    pub fn counter(&mut self, name: &str, help: &str, samples: &[Sample]) {
        self.family(name, help, "counter", samples);
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.header(name, help, "histogram");
        let mut cumulative = 0;
        for (bound, count) in h.bounds.iter().zip(&h.counts) {
            cumulative += count;
            let le = format_value(*bound);
            self.sample(&format!("{name}_bucket"), &[("le", &le)], cumulative as f64);
        }
        self.sample(
            &format!("{name}_bucket"),
            &[("le", "+Inf")],
            h.count() as f64,
        );
        self.sample::<&str>(&format!("{name}_sum"), &[], h.sum);
        self.sample::<&str>(&format!("{name}_count"), &[], h.count() as f64);
    }

    pub fn finish(self) -> String {
        self.out
    }

    fn family(&mut self, name: &str, help: &str, kind: &str, samples: &[Sample]) {
        self.header(name, help, kind);
        for (labels, value) in samples {
            self.sample(name, labels, *value);
        }
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample<V: AsRef<str>>(&mut self, name: &str, labels: &[(&str, V)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            let inner: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v.as_ref())))
                .collect();
            let _ = write!(self.out, "{{{}}}", inner.join(","));
        }
        let _ = writeln!(self.out, " {}", format_value(value));
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// Integers without a fraction, everything else as Rust prints floats
/// (shortest round-trip form, which Prometheus parses).
fn format_value(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// Seconds since the Unix epoch, 0 for never.
pub fn timestamp(t: Option<SystemTime>) -> f64 {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_in_the_text_format() {
        let mut e = Exposition::default();
        e.counter(
            "svc_agent_service_packets_total",
            "Packets.",
            &[(
                vec![("namespace", "default".into()), ("service", "we\"b".into())],
                3.0,
            )],
        );
        e.gauge("svc_agent_frontends_programmed", "Frontends.", &single(2.0));
        let mut h = Histogram::exponential(0.001, 2.0, 3);
        for v in [0.0005, 0.003, 0.003, 10.0] {
            h.observe(v);
        }
        e.histogram("kubeproxy_sync_proxy_rules_duration_seconds", "Sync.", &h);
        assert_eq!(
            e.finish(),
            "# HELP svc_agent_service_packets_total Packets.\n\
             # TYPE svc_agent_service_packets_total counter\n\
             svc_agent_service_packets_total{namespace=\"default\",service=\"we\\\"b\"} 3\n\
             # HELP svc_agent_frontends_programmed Frontends.\n\
             # TYPE svc_agent_frontends_programmed gauge\n\
             svc_agent_frontends_programmed 2\n\
             # HELP kubeproxy_sync_proxy_rules_duration_seconds Sync.\n\
             # TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram\n\
             kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.001\"} 1\n\
             kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.002\"} 1\n\
             kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.004\"} 3\n\
             kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"+Inf\"} 4\n\
             kubeproxy_sync_proxy_rules_duration_seconds_sum 10.0065\n\
             kubeproxy_sync_proxy_rules_duration_seconds_count 4\n"
        );
    }
}
