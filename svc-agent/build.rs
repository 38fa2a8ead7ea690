//! Builds the eBPF object (`svc-ebpf`) with the pinned toolchain and leaves
//! it in OUT_DIR, where `dataplane.rs` embeds it.
//!
//! Needs `bpf-linker` on PATH; `cargo xtask build` installs it.
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    // The kernel crate needs `-Z build-std=core`. RUSTC_BOOTSTRAP lets the
    // pinned stable toolchain accept it; it is set for this build script's
    // child cargo only, never for the userspace build.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    // The kernel crate also compiles svc-common; rebuild when either changes.
    println!("cargo::rerun-if-changed=../svc-common/src");
    aya_build::build_ebpf(
        [Package {
            name: "svc-ebpf",
            root_dir: "../svc-ebpf",
            ..Default::default()
        }],
        Toolchain::Custom(&pinned_toolchain()?),
    )
}

/// The channel pinned in rust-toolchain.toml, so both halves are always
/// built by the same compiler (and bpf-linker's LLVM matches it).
fn pinned_toolchain() -> anyhow::Result<String> {
    let file = "../rust-toolchain.toml";
    println!("cargo::rerun-if-changed={file}");
    let text = std::fs::read_to_string(file)?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("channel = "))
        .map(|c| c.trim_matches('"').to_string())
        .ok_or_else(|| anyhow::anyhow!("no channel in {file}"))
}
