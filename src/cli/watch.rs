//! `aa-policyd watch`: the unprivileged remote watcher.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

pub fn run(policy: &Path, socket: &Path, periodic: Duration) -> anyhow::Result<ExitCode> {
    aa_policyd::remote_watch::run(policy, socket, periodic)?;
    Ok(ExitCode::SUCCESS)
}
