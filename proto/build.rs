//! Compiles the `.proto` files with protox (pure Rust), so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "evalctl/v1/common.proto",
        "evalctl/v1/campaign.proto",
        "evalctl/v1/agent.proto",
        "evalctl/v1/admin.proto",
        "evalctl/v1/schedule.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // `compile_fds` does not write the descriptor set itself; the reflection service needs it.
    std::fs::write(
        out_dir.join("evalctl_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
