"""Replicate Concurrent Generation: image generation with limits shared across replicas."""

SERVICE_NAME = "replicate-concurrent-generation"
VERSION = "4.1 (Redis leased semaphores + URL-direct-return)"
