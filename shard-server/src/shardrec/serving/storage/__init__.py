"""Index artifacts in a store: a local folder or an S3-compatible object store (docs/object-storage.md)."""
