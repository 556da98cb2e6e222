//! Writes every target's seeds into `<folder>/<target>/` (default
//! `fuzz/corpus`), the layout `cargo fuzz run <target>` reads.
//!
//! `cargo run -p leadgate-fuzz-targets --bin seed-corpus [-- <folder>]`

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../corpus"));
    for (target, _) in leadgate_fuzz_targets::TARGETS {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir)?;
        let seeds = leadgate_fuzz_targets::corpus::seeds(target);
        for seed in &seeds {
            std::fs::write(dir.join(&seed.name), &seed.data)?;
        }
        println!("{}: {} seeds in {}", target, seeds.len(), dir.display());
    }
    Ok(())
}
