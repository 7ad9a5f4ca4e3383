"""Data: read, clean, tokenize to shards, and load batches (numpy; grain for the loaders)."""
