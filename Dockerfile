# Rampart container image: build with the Rust toolchain, run on a slim Debian as a non-root user.
#
#   docker build -t rampart .
#   docker run --rm -p 8080:8080 rampart            # config baked in at /etc/rampart/proxy.toml
#   docker run --rm rampart check                   # validate the baked-in config (exit 0/1)
#   docker run --rm -v $PWD/my.toml:/etc/rampart/proxy.toml:ro -p 8080:8080 rampart
#
# Ports: 8080 public listener (server.listen). 9091 admin listener (server.admin_listen:
# /healthz, /metrics) is internal: the shipped config binds it to 127.0.0.1; set
# RAMPART_ADMIN_LISTEN=0.0.0.0:9091 to let Prometheus on the same private network scrape it, and
# never publish it.

############################ builder ############################
FROM rust:1-bookworm AS builder

# cmake: pingora's compression dependency builds zlib-ng (libz-ng-sys) from source.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# Profile-guided: every crate, Pingora's too, is optimised with the profile of a training run
# (pgo/rampart.profdata, remade by scripts/pgo.sh; `./dev release` builds the same way): about a
# quarter less CPU per proxied request (BENCHMARKS.md, session 27). The path must be absolute.
COPY pgo ./pgo
ENV RUSTFLAGS="-Cprofile-use=/src/pgo/rampart.profdata"

# Dependency layer: build every dependency against stub sources, so editing src/ does not
# recompile Pingora (the slow part). Only Cargo.toml/Cargo.lock (or profile) changes invalidate it.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src tests \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs tests/main.rs \
 && cargo build --release --locked --bin rampart \
 && rm -rf src tests

# The real sources. COPY keeps the context's mtimes, which can be older than the stub build's
# artifacts; touch them so cargo rebuilds the rampart crate instead of shipping the stub.
COPY src ./src
RUN find src -name '*.rs' -exec touch {} + \
 && cargo build --release --locked --bin rampart \
 && install -Dm755 target/release/rampart /out/rampart

############################ runtime ############################
FROM debian:bookworm-slim

# ca-certificates: rediss:// and TLS upstreams verify against the system roots.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 rampart \
 && useradd --system --uid 10001 --gid rampart --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin rampart

COPY --from=builder /out/rampart /usr/local/bin/rampart
COPY deploy/docker/healthcheck.sh /usr/local/bin/rampart-healthcheck
COPY config/proxy.toml /etc/rampart/proxy.toml

# Rampart sets the allocator's purge delay itself (src/alloc.rs); MIMALLOC_PURGE_DELAY here
# would override it.
ENV RAMPART_CONFIG=/etc/rampart/proxy.toml \
    RUST_LOG=info

# Numeric so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001

# 8080: public. 9091: admin (/healthz, /metrics), internal only; see the header.
EXPOSE 8080 9091

# Liveness via bash /dev/tcp (no curl in the image): GET /healthz on the admin listener, taken
# from RAMPART_ADMIN_LISTEN (else 127.0.0.1:9091, the shipped default).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/rampart-healthcheck"]

# SIGTERM (docker stop) drains in-flight requests for server.grace_period; give the container
# a stop timeout above 2 x grace_period + 1s (compose: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["rampart"]
CMD ["run"]
