//! With `--features etcd`, compiles the minimal etcd proto used by `kv bench --target etcd`
//! (a vendored protoc, so a fresh machine needs no system protoc). Without it, does nothing.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "etcd")]
    {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // prost-build reads PROTOC from this build script's environment.
        std::env::set_var("PROTOC", &protoc);
        tonic_prost_build::configure()
            .build_server(false)
            .compile_protos(&["src/bench/etcd/rpc.proto"], &["src/bench/etcd"])?;
        println!("cargo:rerun-if-changed=src/bench/etcd/rpc.proto");
    }
    println!("cargo:rerun-if-changed=build.rs");
    Ok(())
}
