"""Kafka plumbing shared by the worker, serving and the command line: topics, retries."""
