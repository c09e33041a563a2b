# CoreBase API server. It drives the host's Docker Engine through the mounted socket.
FROM python:3.12-slim

RUN useradd --system --home-dir /var/lib/corebase --create-home corebase
WORKDIR /opt/corebase
COPY pyproject.toml README.md ./
COPY corebase ./corebase
COPY plugins ./plugins
COPY migrations ./migrations
COPY config ./config
RUN pip install --no-cache-dir .

# Inside the container the server must listen on all interfaces so the published port reaches it;
# docker-compose.yml publishes that port on the host's loopback address only.
ENV COREBASE_SERVER_HOST=0.0.0.0 \
    COREBASE_DATA_DIR=/var/lib/corebase
USER corebase
EXPOSE 8420
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8420/health').status != 200)"
ENTRYPOINT ["corebase"]
CMD ["serve"]
