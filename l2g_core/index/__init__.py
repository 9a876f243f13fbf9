"""The rolling local-feature index: time-bucketed FAISS shards per camera."""
