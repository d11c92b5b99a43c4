# corepin container image (README: "Packaging").
#
#   docker build -t corepin .
#   docker run --rm --security-opt seccomp=config/seccomp-io_uring.json \
#     --ulimit memlock=-1:-1 --ulimit nofile=1048576:1048576 \
#     -p 7999:7999 -p 127.0.0.1:5561:5561 corepin
#
# corepin runs io_uring, which the default seccomp profiles of Docker 25+
# and containerd 2 block: the profile above is Docker's default plus
# io_uring_setup, io_uring_enter and io_uring_register.

# Build stage: Rust on Debian 12 (bookworm), the release the runtime image
# is built from, so the binary and its glibc match.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# --locked: the versions in Cargo.lock, as tested. Symbols are stripped
# (as cargo deb does); the config is checked here so a broken one fails
# the build rather than the container.
RUN CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release --locked -p corepin --bin corepin \
 && ./target/release/corepin check --config config/container.toml

# Runtime stage: glibc, libgcc, libstdc++ (libzmq, linked statically for
# the ZeroMQ interfaces, is C++) and CA certificates (for TLS to backends),
# no shell or package manager; runs as the unprivileged user "nonroot"
# (uid 65532; numeric, so Kubernetes runAsNonRoot can check it).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/corepin /usr/bin/corepin
COPY config/container.toml /etc/corepin/corepin.toml
USER 65532:65532
# 7999: clients (HTTP, WebSocket). 5561: publish API, /health, /metrics.
EXPOSE 7999 5561
ENTRYPOINT ["/usr/bin/corepin"]
CMD ["run", "--config", "/etc/corepin/corepin.toml"]
