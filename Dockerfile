# velox-cache as an appliance:
#   docker build -t velox-cache .
#   docker run -d -p 8080:8080 -p 127.0.0.1:9180:9180 -v velox-cache:/data \
#     -e VELOX_CACHE_SERVER_URL=http://velox:9000 velox-cache
# The admin listener (health, metrics, cache management) binds all interfaces inside the
# container so that a published port reaches it: publish it on loopback, as above.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, in a layer of their own that only Cargo.toml and Cargo.lock invalidate: a
# crate of empty targets (every target Cargo.toml names must exist) builds every dependency.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && for b in $(awk '/^\[\[bench\]\]/{b=1} b && /^name *=/{gsub(/[" ]/, "", $0); sub(/name=/, "", $0); print; b=0}' Cargo.toml); do \
      echo 'fn main() {}' > "benches/$b.rs"; \
    done \
 && cargo build --release --locked --bin velox-cache \
 && rm -rf src benches
# Then the sources: a change here rebuilds velox-cache alone. The empty crate's own build
# products go first, so that the real sources are compiled whatever their timestamps say.
COPY src ./src
COPY benches ./benches
# The console's page, built into the binary (include_bytes!).
COPY assets ./assets
RUN cargo clean --release --locked -p velox-cache \
 && cargo build --release --locked --bin velox-cache

FROM debian:bookworm-slim
# ca-certificates: https:// upstreams and Velox servers are verified against the system roots.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home velox \
 && mkdir -p /data \
 && chown velox:velox /data
COPY --from=build /src/target/release/velox-cache /usr/local/bin/velox-cache
ENV VELOX_CACHE_DATA_DIR=/data \
    VELOX_CACHE_LISTEN=0.0.0.0:8080 \
    VELOX_CACHE_ADMIN_LISTEN=0.0.0.0:9180
VOLUME /data
EXPOSE 8080 9180
USER velox
# Asks the admin listener's /readyz; needs no curl in the image.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 CMD ["velox-cache", "healthcheck"]
ENTRYPOINT ["velox-cache"]
