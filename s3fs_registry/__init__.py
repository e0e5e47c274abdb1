"""s3fs-registry: an S3 bucket prefix as a directory, for an unmodified container registry."""

__version__ = "0.1.0"
