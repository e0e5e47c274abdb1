"""The benchmark harness of s3fs-registry: this mount against its peers on one S3 server.

Run it with ``python bench/run.py`` (see bench/README.md).
"""
