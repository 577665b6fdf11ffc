"""Generated gRPC stubs (see clients/python/generate.sh); not a public API."""
