# syntax=docker/dockerfile:1
# wa-onboard container image.
#
#   docker build -t wa-onboard .
#   docker run --rm -p 50051:50051 -p 8080:8080 -p 9090:9090 -v wa-onboard-data:/data wa-onboard
#
# Stage 1 builds the dependencies against a placeholder crate, so that layer stays cached
# until Cargo.toml, Cargo.lock, build.rs or proto/ change; stage 2 builds the real source.
# protoc comes from the `protoc-bin-vendored` crate at build time: nothing is installed for it
# and nothing of it ships in the runtime image.
# No Docker engine runs on the CI machines: CI lints this file with hadolint and checks that
# every path it copies exists (scripts/deploy-check).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0

# Dependencies (and the generated gRPC code) only: cached apart from the source.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY migrations ./migrations
RUN mkdir -p src \
    && echo 'fn main() {}' > src/main.rs \
    && : > src/lib.rs \
    && cargo build --release --locked --bin wa-onboard \
    && rm -rf src

# The service itself.
COPY src ./src
# The operator console page, embedded in the binary.
COPY web/console.html ./web/console.html
# Cargo decides by mtime: make sure the placeholder artefacts are rebuilt.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin wa-onboard \
    && install -D -m 0755 target/release/wa-onboard /out/wa-onboard \
    && install -d -m 0770 /out/data

# Runtime: glibc, libgcc and CA certificates only (no shell, no package manager), uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/wa-onboard /usr/local/bin/wa-onboard
COPY --from=build --chown=65532:65532 /out/data /data
WORKDIR /data
# Listen on every interface in the container; state (SQLite file, generated development
# secrets) under the /data volume. Production sets the database URL, encryption key and API
# keys from a secret (see helm/wa-onboard).
ENV WA_ONBOARD_GRPC_ADDR=0.0.0.0:50051 \
    WA_ONBOARD_WEBHOOK_ADDR=0.0.0.0:8080 \
    WA_ONBOARD_METRICS_ADDR=0.0.0.0:9090 \
    WA_ONBOARD_DATA_DIR=/data \
    WA_ONBOARD_LOG_FORMAT=json
USER 65532:65532
VOLUME ["/data"]
# 50051 gRPC (health: grpc.health.v1.Health), 8080 provider webhooks, 9090 metrics.
EXPOSE 50051 8080 9090
# The image has no shell or probe binary. Kubernetes probes the gRPC health service natively
# (helm/wa-onboard: readiness on wa.onboard.v1.OnboardingService, liveness on the process);
# elsewhere probe from outside, e.g.
#   grpcurl -plaintext -d '{"service":"wa.onboard.v1.OnboardingService"}' HOST:50051 grpc.health.v1.Health/Check
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/wa-onboard"]
CMD ["serve"]
