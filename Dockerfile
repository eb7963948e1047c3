# ExecAI Gateway image. Build: docker build -t execai-gateway .
# The base image is pinned by digest (python 3.11.10, Debian bookworm slim; docs/deploy.md says how
# to move it). Nothing is downloaded at run time: the tokenizer files ship in the wheel and
# LITELLM_LOCAL_MODEL_COST_MAP keeps litellm's price map local.
ARG BASE=python:3.11.10-slim-bookworm@sha256:5148c0e4bbb64271bca1d3322360ebf4bfb7564507ae32dd639322e4952a6b16

FROM ${BASE} AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY gateway ./gateway
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt .

FROM ${BASE}
RUN useradd --system --uid 10001 --user-group --home-dir /srv --no-create-home gateway
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv
# Code, config and policies are read-only (owned by root); the one writable place is /srv/data:
# SQLite, the spool and write-ahead files, the embedded RAG index (GATEWAY_DATA_DIR, config.yaml).
COPY config.yaml ./config.yaml
COPY policies ./policies
RUN mkdir -p /srv/data && chown 10001:10001 /srv/data && chmod 0750 /srv/data
VOLUME ["/srv/data"]
ENV PATH=/opt/venv/bin:$PATH \
    GATEWAY_CONFIG=/srv/config.yaml \
    GATEWAY_DATA_DIR=/srv/data \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS="" \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8080
HEALTHCHECK CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz')"]
CMD ["gateway", "serve", "--host", "0.0.0.0"]
