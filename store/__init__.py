"""The data layer: conversation history (PostgreSQL), the LLM's context cache
(in-process L1, Redis L2, PostgreSQL L3) and long-term memory (Qdrant).

Imports go schemas <- streams <- store <- processors, gateway (docs/data.md).
"""
