# ExecAI Gateway image. Build: docker build -t execai-gateway .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY gateway ./gateway
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home /srv gateway
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv
COPY config.yaml ./config.yaml
COPY policies ./policies
# The embedded defaults write here (SQLite, the spool and write-ahead files, the RAG index): owned by
# the runtime user. Mount volumes over /srv/spool and /srv/rag-index in production.
RUN mkdir -p /srv/spool /srv/rag-index && chown gateway:gateway /srv /srv/spool /srv/rag-index
ENV PATH=/opt/venv/bin:$PATH \
    GATEWAY_CONFIG=/srv/config.yaml \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS="" \
    PYTHONUNBUFFERED=1
USER gateway
EXPOSE 8080
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz')"
CMD ["gateway", "serve", "--host", "0.0.0.0"]
