# AgentSpace image: a static binary on an empty base, running as a non-root user.
#
#   docker build -t agentspace .
#   docker run -p 8008:8008 -v agentspace-data:/data agentspace
#
# The binary is built by deploy/build-static.sh, the same script .ci/run
# runs, so CI checks exactly this build.

FROM golang:1.26-bookworm AS build
WORKDIR /src
# Dependencies first, so code changes do not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN deploy/build-static.sh /out/agentspace \
 && mkdir -p /out/data \
 && echo 'agentspace:x:10001:10001:AgentSpace:/data:/sbin/nologin' > /out/passwd \
 && echo 'agentspace:x:10001:' > /out/group

FROM scratch
# CA roots for HTTPS to application services and webhooks.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/passwd /etc/passwd
COPY --from=build /out/group /etc/group
COPY --from=build --chown=10001:10001 /out/data /data
COPY --from=build /out/agentspace /usr/local/bin/agentspace
USER 10001:10001
# /data holds the SQLite database (unless DATABASE_URL is set), the event
# signing key (signing.key, also needed with PostgreSQL) and uploaded media.
ENV DB_PATH=/data/agentspace.db \
    BIND_ADDRESS=0.0.0.0 \
    PORT=8008
VOLUME /data
EXPOSE 8008
ENTRYPOINT ["/usr/local/bin/agentspace"]
CMD ["serve"]
