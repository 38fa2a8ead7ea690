# syntax=docker/dockerfile:1
# The svc-agent image, as deploy/ runs it (docs/kubernetes.md):
#
#   docker build -t REGISTRY/svc-agent:TAG .
#
# Builder: `cargo xtask build`, the project's one build path. It installs
# what the build needs (rust-src, and bpf-linker built against the pinned
# toolchain's own libLLVM: no prebuilt one matches it), builds the eBPF
# object and embeds it in the release agent. Its bootstrap also apt-installs
# the packages the tests drive (iproute2, ethtool, socat, iperf3...): useless
# here but harmless, in a stage that is thrown away.
ARG RUST_IMAGE=rust:1.99-bookworm
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# The toolchain pinned in rust-toolchain.toml, whatever 1.99.x the image has
# (rustup no longer installs it implicitly). Its own layer, cached.
COPY rust-toolchain.toml ./
RUN rustup toolchain install && rustc --version
COPY . .
# Caches survive source changes: crates, the build directory, and bpf-linker
# with the libLLVM links its rpath points into (under CARGO_HOME).
ENV CARGO_INSTALL_ROOT=/opt/cargo-install \
    PATH=/opt/cargo-install/bin:$PATH
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/usr/local/cargo/svc-proxy-llvm \
    --mount=type=cache,target=/opt/cargo-install \
    --mount=type=cache,target=/src/target \
    cargo xtask build \
    && install -m 0755 target/release/svc-agent /usr/local/bin/svc-agent

# Runtime: the agent alone. Same Debian release as the builder (glibc).
# It needs `mount` (util-linux, in the base image) to mount bpffs when the
# node has none at /sys/fs/bpf; TLS is rustls with the service account's CA.
FROM debian:bookworm-slim
COPY --from=builder /usr/local/bin/svc-agent /usr/local/bin/svc-agent
ENTRYPOINT ["svc-agent"]
