//! `target/bench/report.md`: the machine, how to rerun, a summary table,
//! then each part's tables, plots and raw output.
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

/// One line of the summary table: a measurement for our programs next to
/// kube-proxy's two modes and the baseline it is a ratio to.
#[derive(Clone, Debug, Default)]
pub struct Row {
    pub area: String,
    pub measure: String,
    pub ours: String,
    pub iptables: String,
    pub nftables: String,
    /// What the others are compared with (direct pod to pod, the empty
    /// program, ...), or "".
    pub baseline: String,
}

struct Section {
    title: String,
    /// Markdown: explanations, tables, plots.
    body: String,
    /// The part's printed output, verbatim.
    log: Vec<String>,
}

pub struct Report {
    quick: bool,
    started: std::time::SystemTime,
    sections: Vec<Section>,
    rows: Vec<Row>,
    pub notes: Vec<String>,
}

/// Where the report and plots go: `target/bench/` of the workspace (or of
/// `CARGO_TARGET_DIR`).
pub fn out_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("bench")
}

impl Report {
    pub fn new(quick: bool) -> Self {
        Self {
            quick,
            started: std::time::SystemTime::now(),
            sections: Vec::new(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn section(&mut self, title: &str) {
        self.sections.push(Section {
            title: title.to_string(),
            body: String::new(),
            log: Vec::new(),
        });
    }

    fn current(&mut self) -> &mut Section {
        if self.sections.is_empty() {
            self.section("Output");
        }
        self.sections.last_mut().unwrap()
    }

    pub fn log(&mut self, line: &str) {
        self.current().log.push(line.to_string());
    }

    /// Adds markdown to the current section.
    pub fn markdown(&mut self, text: &str) {
        let body = &mut self.current().body;
        body.push_str(text);
        if !text.ends_with('\n') {
            body.push('\n');
        }
        body.push('\n');
    }

    /// Embeds a plot (a file in `out_dir()`) in the current section.
    pub fn plot(&mut self, title: &str, file: &str) {
        self.markdown(&format!("![{title}]({file})"));
    }

    pub fn row(&mut self, row: Row) {
        self.rows.push(row);
    }

    /// The summary table, as markdown (also what is printed at the end).
    pub fn summary_table(&self) -> String {
        let mut t = String::from(
            "| area | measurement | svc-proxy (eBPF) | kube-proxy iptables | kube-proxy nftables | baseline |\n|---|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} |",
                r.area, r.measure, r.ours, r.iptables, r.nftables, r.baseline
            )
            .unwrap();
        }
        t
    }

    pub fn render(&self, machine: &str, tools: &[(&str, String)], parts: &[&str]) -> String {
        let mut md = String::new();
        let elapsed = self.started.elapsed().map(|d| d.as_secs()).unwrap_or(0);
        writeln!(
            md,
            "# svc-proxy benchmarks{}\n",
            if self.quick { " (--quick)" } else { "" }
        )
        .unwrap();
        writeln!(md, "* Machine: {machine}").unwrap();
        for (tool, version) in tools {
            writeln!(md, "* `{tool}`: {version}").unwrap();
        }
        writeln!(
            md,
            "* Parts run: {} ({} s in all)\n",
            parts.join(", "),
            elapsed
        )
        .unwrap();
        md.push_str("## Rerun\n\n");
        md.push_str("As root, from the workspace (everything runs in network namespaces the bench creates and removes):\n\n");
        md.push_str("    cargo xtask bench                 # everything (about 20 minutes)\n");
        md.push_str("    cargo xtask bench --quick         # a short smoke run\n");
        md.push_str(
            "    cargo xtask bench program-cost    # one part (others: datapath, control-plane,\n",
        );
        md.push_str("                                      #   costs, throughput, nodeport, latency, cold-start, map-batch)\n");
        md.push_str("    cargo xtask bench --quick datapath\n\n");
        md.push_str("## Summary\n\n");
        md.push_str(&self.summary_table());
        md.push('\n');
        for n in &self.notes {
            writeln!(md, "* {n}").unwrap();
        }
        if !self.notes.is_empty() {
            md.push('\n');
        }
        for s in &self.sections {
            writeln!(md, "## {}\n", s.title).unwrap();
            md.push_str(&s.body);
            if !s.log.is_empty() {
                md.push_str("<details><summary>output</summary>\n\n```text\n");
                for l in &s.log {
                    md.push_str(l);
                    md.push('\n');
                }
                md.push_str("```\n\n</details>\n\n");
            }
        }
        md
    }

    pub fn write(
        &self,
        machine: &str,
        tools: &[(&str, String)],
        parts: &[&str],
    ) -> Result<PathBuf> {
        let dir = out_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("report.md");
        std::fs::write(&path, self.render(machine, tools, parts))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// A markdown table from a header and rows of cells.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut t = format!(
        "| {} |\n|{}\n",
        header.join(" | "),
        "---|".repeat(header.len())
    );
    for r in rows {
        writeln!(t, "| {} |", r.join(" | ")).unwrap();
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_summary_sections_and_logs() {
        let mut r = Report::new(true);
        r.section("Part");
        r.markdown(&table(&["a", "b"], &[vec!["1".into(), "2".into()]]));
        r.log("raw line");
        r.row(Row {
            area: "data path".into(),
            measure: "conn/s".into(),
            ours: "0.95x".into(),
            ..Row::default()
        });
        let md = r.render("2 CPUs", &[("nft", "v1".into())], &["datapath"]);
        assert!(md.contains("# svc-proxy benchmarks (--quick)"));
        assert!(md.contains("| data path | conn/s | 0.95x |  |  |  |"));
        assert!(md.contains("## Part\n\n| a | b |\n|---|---|\n| 1 | 2 |"));
        assert!(md.contains("raw line"));
        assert!(md.contains("cargo xtask bench --quick"));
    }
}
