//! `aa-policyd unload`: remove every program, link, map and pin under a pin
//! dir. Enforcement stops for every process confined through it.

use std::path::Path;
use std::process::ExitCode;

use aa_policyd::loader::kernel;
use anyhow::Context;

pub fn run(pin_dir: &Path) -> anyhow::Result<ExitCode> {
    kernel::unload(pin_dir).with_context(|| format!("unloading {}", pin_dir.display()))?;
    println!(
        "unloaded: no aa-policyd program, link or map remains under {}",
        pin_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
