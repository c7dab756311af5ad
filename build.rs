//! Compiles `proto/*.proto` with tonic-prost-build, using the `protoc` shipped
//! inside the `protoc-bin-vendored` crate so a plain `cargo build` needs nothing
//! installed on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto");
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("runner_storage_descriptor.bin"))
        .compile_protos(&["proto/runner_storage.proto", "proto/raft.proto", "proto/admin.proto"], &["proto"])?;
    Ok(())
}
