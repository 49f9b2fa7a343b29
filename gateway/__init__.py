"""Morgan's gateway: WebSocket voice sessions, POST /api/text, auth, overload
protection, /health, /metrics and the browser page (docs/protocol.md).

    gateway.app.create_app(settings) -> FastAPI      the ASGI app
    await gateway.server.start(settings)             serve in this event loop
    python -m gateway                                serve on MORGAN_HTTP_HOST:PORT
"""
