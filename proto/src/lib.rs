//! The public gRPC API of jobworker, package `jobworker.v1`.
//!
//! Everything here is generated at build time from `jobworker/v1/jobworker.proto` (see
//! `build.rs`): the message types, the `JobWorker` service's client
//! ([`v1::job_worker_client`]) and server ([`v1::job_worker_server`]), and the encoded
//! descriptor set ([`FILE_DESCRIPTOR_SET`]) that gRPC server reflection serves.
//!
//! [`tls`] holds the transport policy both ends of the API share.

pub mod tls;

/// Package `jobworker.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("jobworker.v1");
}

/// The encoded `FileDescriptorSet` of `jobworker.v1` and its imports, for gRPC
/// server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("jobworker_descriptor");

/// The fully qualified name of the service, as health checks and reflection name it.
pub const SERVICE_NAME: &str = "jobworker.v1.JobWorker";
