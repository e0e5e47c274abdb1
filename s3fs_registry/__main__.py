"""`python -m s3fs_registry` is the same program as the `s3fs-registry` command."""

from s3fs_registry.cli import main

raise SystemExit(main())
