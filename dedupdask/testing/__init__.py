"""Helpers for testing and benchmarking dedupdask (a loopback S3 server)."""

from .s3server import SeaweedFS, free_port

__all__ = ["SeaweedFS", "free_port"]
