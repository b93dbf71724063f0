//! Generated gRPC types of the public API (filled in by the API server work).
