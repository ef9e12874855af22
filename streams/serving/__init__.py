"""Serving: the Redis cache, cache sink, resync, triggers, the lookup (HTTP and fast path)."""
