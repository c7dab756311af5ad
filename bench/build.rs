//! Compiles `proto/etcd.proto` (the etcd calls the bench makes) with
//! tonic-prost-build, client side only, using the `protoc` shipped inside the
//! `protoc-bin-vendored` crate as the node's own build does, so a plain
//! `cargo build` needs nothing installed on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure().build_server(false).compile_protos(&["proto/etcd.proto"], &["proto"])?;
    Ok(())
}
