//! Compiles `jobworker/v1/jobworker.proto` with protox (a pure-Rust protobuf compiler,
//! so no `protoc` is needed) and generates the message types and the tonic client and
//! server. The encoded descriptor set is written next to the generated code for gRPC
//! server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "jobworker/v1/jobworker.proto";
    println!("cargo:rerun-if-changed={proto}");

    let mut compiler = protox::Compiler::new(["."])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_file(proto)?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("jobworker_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Output chunks stay `Bytes` end to end, without a copy.
        .bytes(".")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
