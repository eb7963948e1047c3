"""PII detection and reversible redaction for the ``pii_redaction`` policy.

    entities     entity type names and actions: all the policy's Config needs (imports nothing heavy)
    recognizers  the fast path: structured identifiers in one regex pass, checksum-validated
    ner          spaCy NER (only the ner step); spaCy is imported when a model is loaded
    analyzer     the recognizers combined (as Presidio's AnalyzerEngine did), per-text cache,
                 worker pool, fail-closed errors
    actions      redact / mask / hash / allow applied to spans (as Presidio's anonymizer did)
    placeholders the per-request vault and tolerant, streaming-safe restore
    stream       chunk-by-chunk restore and output scanning of chat completion streams
    texts        where text sits in OpenAI requests and responses
    hooks        the policy's hooks; imported when a chain has the policy, never by validation

Presidio itself is not imported: it pulls in spaCy (about 1.5 s and 60 MB) even for structured
types only. ``tests/test_pii_presidio_parity.py`` holds the engine to Presidio's results.
"""
