# syntax=docker/dockerfile:1
# Breakwater's images, for those who build with Docker (BuildKit), Podman or Buildah:
#
#   docker build --target sidecar  --build-arg REVISION=$(git rev-parse HEAD) -t REGISTRY/breakwater/sidecar:0.1.0 .
#   docker build --target operator --build-arg REVISION=$(git rev-parse HEAD) -t REGISTRY/breakwater/operator:0.1.0 .
#
# `make images` builds the same images without a container engine (images/build.sh, into
# target/images/). The build stage below runs that script's staging step, so both ways put the
# same files in the images; the image stages repeat its configuration, and e2e/tests/images.rs
# builds them with Buildah and checks that files and configuration match.

ARG RUST_VERSION=1.95.0

# Static binaries (musl: no libc to match on the node; ring's C code needs musl-gcc) and each
# image's root filesystem, iptables for the sidecar's init included.
FROM rust:${RUST_VERSION}-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl \
 && apt-get update \
 && apt-get install -y --no-install-recommends musl-tools iptables file \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --locked --profile dist --target x86_64-unknown-linux-musl \
      -p breakwater-sidecar -p breakwater-operator -p breakwater-fault -p breakwater-e2e \
      --bin breakwater-sidecar --bin breakwater-operator --bin breakwater-fault --bin breakwater-e2e-client \
 && images/build.sh --stage-only target/x86_64-unknown-linux-musl/dist /out

# ---- image stages: keep in step with images/build.sh (e2e/tests/images.rs compares them) ----
FROM scratch AS image-base
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /
LABEL org.opencontainers.image.source="https://github.com/breakwater-dev/breakwater" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0"

FROM image-base AS operator
COPY --from=build /out/operator/ /
USER 65532:65532
LABEL org.opencontainers.image.title="Breakwater operator"
ENTRYPOINT ["/usr/local/bin/breakwater-operator"]

FROM image-base AS fault-server
COPY --from=build /out/fault-server/ /
USER 65532:65532
LABEL org.opencontainers.image.title="Breakwater fault server"
ENTRYPOINT ["/usr/local/bin/breakwater-fault"]

FROM image-base AS e2e-client
COPY --from=build /out/e2e-client/ /
USER 65532:65532
LABEL org.opencontainers.image.title="Breakwater e2e client"
ENTRYPOINT ["/usr/local/bin/breakwater-e2e-client"]

# Last, so that a plain `docker build .` gives the sidecar.
FROM image-base AS sidecar
COPY --from=build /out/sidecar/ /
USER 2102:2102
LABEL org.opencontainers.image.title="Breakwater sidecar"
ENTRYPOINT ["/usr/local/bin/breakwater-sidecar"]
