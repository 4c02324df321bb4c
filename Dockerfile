# collabd: a multi-stage build. The runtime image is Debian slim with the
# binary, curl for the health check, and an unprivileged user.

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY build.rs ./
COPY src ./src
COPY lua ./lua
COPY migrations ./migrations
ARG COLLABD_REVISION=unknown
ENV COLLABD_REVISION=${COLLABD_REVISION}
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin collabd

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin collabd
COPY --from=build /src/target/release/collabd /usr/local/bin/collabd
USER 10001
ENV HOST=0.0.0.0 \
    PORT=3000 \
    METRICS_ADDR=0.0.0.0:9090 \
    APP_ENV=prod
EXPOSE 3000 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:9090/readyz || exit 1
ENTRYPOINT ["/usr/local/bin/collabd"]
CMD ["serve"]
