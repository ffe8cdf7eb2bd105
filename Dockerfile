# relais, built from this checkout with the official Rust image:
#   docker build -t relais .
# The runtime image is Debian slim with the one binary; configuration comes from
# RELAIS_* environment variables or a file passed with --config.
FROM rust:1-bookworm AS build
# The etcd client crate compiles etcd's protobuf definitions at build time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin relais

FROM debian:bookworm-slim
COPY --from=build /src/target/release/relais /usr/local/bin/relais
EXPOSE 7880 9464
HEALTHCHECK --interval=5s --timeout=3s CMD ["relais", "healthcheck"]
ENTRYPOINT ["relais"]
CMD ["serve"]
