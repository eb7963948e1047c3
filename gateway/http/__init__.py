"""The HTTP side: thin ASGI adapters over the pipeline (``gateway.pipeline``).

    asgi     types, reading a bounded body, OpenAI-format errors, the handler wrapper
    openai   /v1: chat completions, embeddings (relayed or streamed), models
    ops      /healthz, /readyz, /metrics
    admin    /admin: a FastAPI sub-app (admin scope, tenant-bounded)
    server   the HTTP server's own limits (uvicorn protocol), before any route
    connection  what the server answers and does before the app sees a request

``gateway.app.Gateway`` wires them to the gateway's services and dispatches by path; the admin
routes are a FastAPI sub-app (``gateway.http.admin``).
"""
