# The image of the DaemonSet's device-plugin container (deploy/kubernetes/daemonset.yaml):
# vramguard-device-plugin alone, built from a checkout. From the checkout's root:
#
#   docker build -f deploy/kubernetes/device-plugin.Dockerfile -t registry.example/vramguard-device-plugin:0.1.0 .
#
# The plugin is not preloaded into anything: it runs only in this image, whose C library is the
# build stage's (both Debian 12).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p vramguard-device-plugin

FROM debian:bookworm-slim
COPY --from=build /src/target/release/vramguard-device-plugin /usr/local/bin/vramguard-device-plugin
ENTRYPOINT ["/usr/local/bin/vramguard-device-plugin"]
