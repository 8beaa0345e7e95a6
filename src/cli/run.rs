//! `aa-policyd run`: the daemon.

use std::process::ExitCode;

use aa_policyd::daemon::{self, RunOptions};

pub fn run(options: &RunOptions) -> anyhow::Result<ExitCode> {
    daemon::run(options)?;
    Ok(ExitCode::SUCCESS)
}
