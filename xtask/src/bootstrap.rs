//! Makes a fresh machine ready, idempotently: each step checks first and
//! does nothing when its work is already done.
//!
//! * the pinned toolchain's `rust-src` (for `-Z build-std=core`);
//! * `bpf-linker`, built against the pinned toolchain's own libLLVM, since
//!   no usable prebuilt exists here;
//! * the Debian packages the tests and benchmarks drive (iproute2, ethtool,
//!   socat, curl, iperf3, python3, bpftool, iptables, nftables, conntrack).
//!
//! Nothing is downloaded outside rustup, crates.io and apt.
use std::{
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// bpf-linker's version and the LLVM feature matching the pinned toolchain.
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-23";

/// Debian package providing each command the tests and benchmarks run.
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("socat", "socat"),
    ("curl", "curl"),
    ("iperf3", "iperf3"),
    ("python3", "python3"),
    ("bpftool", "bpftool"),
    // The benchmarks load kube-proxy's rulesets (both iptables backends
    // come with the iptables package) and flush conntrack between modes.
    ("iptables-restore", "iptables"),
    ("iptables-legacy-restore", "iptables"),
    ("nft", "nftables"),
    ("conntrack", "conntrack"),
];

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn ensure_all() -> Result<()> {
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    ensure_packages()?;
    Ok(())
}

fn ensure_rust_src() -> Result<()> {
    let src = sysroot()?.join("lib/rustlib/src/rust/library/core");
    if src.exists() {
        return Ok(());
    }
    eprintln!("bootstrap: installing rust-src");
    run(Command::new("rustup").args(["component", "add", "rust-src"]))
}

fn ensure_bpf_linker() -> Result<()> {
    let sysroot = sysroot()?;
    let libllvm = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .context("the toolchain has no libLLVM.so.* to build bpf-linker against")?;
    let soname = libllvm.file_name().unwrap().to_owned();
    // Usable means: it runs, and against this toolchain's LLVM (a linker
    // built for another LLVM cannot read the bitcode rustc emits).
    let works = Command::new("bpf-linker")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let same_llvm = which("bpf-linker").is_some_and(|bin| {
        Command::new("ldd")
            .arg(bin)
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&*soname.to_string_lossy()))
    });
    if works && same_llvm {
        return Ok(());
    }
    // bpf-linker links libLLVM dynamically and finds it through LLVM_PREFIX
    // at build time and an rpath into LLVM_PREFIX/lib at run time, so the
    // prefix must stay where it is. It points at the toolchain's libLLVM.
    let prefix = cargo_home()?
        .join("svc-proxy-llvm")
        .join(sysroot.file_name().unwrap());
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    for name in [std::ffi::OsStr::new("libLLVM.so"), soname.as_os_str()] {
        let link = lib.join(name);
        let _ = std::fs::remove_file(&link);
        symlink(&libllvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!(
        "bootstrap: building bpf-linker {BPF_LINKER_VERSION} against {}",
        libllvm.display()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .args([
            "install",
            "bpf-linker",
            "--force",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args([
            "--no-default-features",
            "--features",
            BPF_LINKER_LLVM_FEATURE,
        ])
        .env("LLVM_PREFIX", &prefix)
        .current_dir(workspace_root()))
}

fn ensure_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(cmd, _)| !on_path(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("bootstrap: installing {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn on_path(cmd: &str) -> bool {
    which(cmd).is_some()
}

fn which(cmd: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(cmd))
        .find(|p| p.is_file())
}

fn sysroot() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(workspace_root())
        .output()
        .context("running rustc --print sysroot")?;
    if !out.status.success() {
        bail!("rustc --print sysroot failed");
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

fn cargo_home() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        return Ok(h.into());
    }
    let home = std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
