"""Retrieval-augmented generation: vector stores, embedders, chunking and ingestion."""
