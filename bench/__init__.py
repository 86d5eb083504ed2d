"""The performance benchmark (make bench), beside the package: never installed with it."""
