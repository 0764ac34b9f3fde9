//! Compiles the .proto files with a vendored protoc, so a fresh machine needs no system protoc.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    // prost-build reads PROTOC from this build script's environment.
    std::env::set_var("PROTOC", &protoc);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        PathBuf::from("proto/kv.proto"),
        PathBuf::from("proto/internal.proto"),
    ];
    let includes = [PathBuf::from("proto"), well_known];
    tonic_prost_build::configure()
        // Decode failures are INVALID_ARGUMENT, not INTERNAL (see src/codec.rs).
        .codec_path("crate::codec::KvCodec")
        .file_descriptor_set_path(out.join("kv_descriptor.bin"))
        .compile_protos(&protos, &includes)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
