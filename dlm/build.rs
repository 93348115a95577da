//! Compiles `proto/dlm.proto` with protox (pure Rust), so the build needs no
//! `protoc` binary, and generates the prost messages and tonic stubs from the
//! resulting file descriptor set.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/dlm.proto");
    let descriptors = protox::compile(["dlm.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
