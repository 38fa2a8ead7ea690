//! `cargo xtask bench [--quick] [PART...]`: measurements taken side by
//! side in one run, printed as they come and written to
//! `target/bench/report.md` with PNG plots; the summary table is printed
//! at the end. Not a test: nothing here gates CI. The parts live in
//! `tests::bench`.
//!
//! Parts: program-cost, datapath, control-plane (kube-proxy's iptables
//! and nftables modes side by side) and the older costs, throughput,
//! nodeport, latency, cold-start, and map-batch (per-key against batched
//! map operations). With no names, all of them (with
//! `--quick`, the first three, shortened).
use anyhow::{Result, bail};
use tests::bench::{
    Ctx, control_plane, datapath, load_average, machine, map_batch, program_cost, report,
    tool_version,
};

type Part = fn(&mut Ctx) -> Result<()>;

const PARTS: [(&str, Part); 9] = [
    ("program-cost", program_cost::program_cost),
    ("datapath", datapath::datapath),
    ("control-plane", control_plane::control_plane),
    ("costs", program_cost::costs),
    ("throughput", datapath::throughput),
    ("nodeport", datapath::nodeport_forwarding),
    ("latency", control_plane::change_latency),
    ("cold-start", control_plane::cold_start),
    ("map-batch", map_batch::map_batch),
];

/// What `--quick` runs when no part is named.
const QUICK_DEFAULT: [&str; 3] = ["program-cost", "datapath", "control-plane"];

fn main() -> Result<()> {
    let mut quick = false;
    let mut only: Vec<String> = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => quick = true,
            name if PARTS.iter().any(|(p, _)| *p == name) => only.push(arg),
            other => bail!(
                "unknown part {other:?}; parts: {}",
                PARTS.map(|(p, _)| p).join(", ")
            ),
        }
    }
    let selected: Vec<(&str, Part)> = PARTS
        .iter()
        .copied()
        .filter(|(name, _)| {
            if only.is_empty() {
                !quick || QUICK_DEFAULT.contains(name)
            } else {
                only.iter().any(|o| o == name)
            }
        })
        .collect();
    let mut ctx = Ctx::new(quick);
    let machine = machine();
    let load_before = load_average();
    println!("{machine}; load average {load_before}");
    let mut failed = Vec::new();
    for (name, part) in &selected {
        if let Err(e) = part(&mut ctx) {
            let msg = format!("part {name} failed: {e:#}");
            eprintln!("{msg}");
            ctx.report.notes.push(msg);
            failed.push(*name);
        }
    }
    let tools: Vec<(&str, String)> = ["iptables", "nft", "iperf3"]
        .into_iter()
        .map(|t| (t, tool_version(t)))
        .collect();
    ctx.report.notes.push(format!(
        "Load average (1, 5, 15 min) at the start: {load_before}; at the end: {}. Other work on the machine shows as noise in the data-path rates.",
        load_average()
    ));
    let names: Vec<&str> = selected.iter().map(|(n, _)| *n).collect();
    let path = ctx.report.write(&machine, &tools, &names)?;
    println!("\n== Summary ({machine})\n");
    println!("{}", ctx.report.summary_table());
    println!("report: {}", path.display());
    println!("plots:  {}/*.png", report::out_dir().display());
    if !failed.is_empty() {
        bail!("failed parts: {}", failed.join(", "));
    }
    Ok(())
}
