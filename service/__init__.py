"""Replicate Concurrent Generation: image generation with limits shared across replicas."""

SERVICE_NAME = "replicate-concurrent-generation"
VERSION = "4.0 (Redis leased semaphores + URL-direct-return)"
