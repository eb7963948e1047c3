"""PII detection and reversible redaction for the ``pii_redaction`` policy.

    recognizers  the fast path: structured identifiers in one regex pass, checksum-validated
    ner          spaCy NER (only the ner step) as a Presidio recognizer
    analyzer     Presidio AnalyzerEngine assembly, per-text cache, worker pool, fail-closed errors
    actions      redact / mask / hash / allow with Presidio anonymizer operators
    placeholders the per-request vault and tolerant, streaming-safe restore
    stream       chunk-by-chunk restore and output scanning of chat completion streams
    texts        where text sits in OpenAI requests and responses
"""
