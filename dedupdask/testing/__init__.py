"""Helpers for testing and benchmarking dedupdask (a loopback S3 server, a fault proxy)."""

from .faultproxy import FaultProxy
from .s3server import SeaweedFS, free_port

__all__ = ["FaultProxy", "SeaweedFS", "free_port"]
