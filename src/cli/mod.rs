//! Subcommands and their shared exit-code contract.
//!
//! Exit codes are part of the interface scripts depend on: 0 success, 1 an
//! invalid policy or failed operation, 2 a usage error (clap), 3 a change the
//! safety guard refuses.

mod check;
mod diff;
mod exec;
mod unload;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use aa_policyd::loader::kernel::DEFAULT_PIN_DIR;
use aa_policyd::ruleset::Arch;
use clap::{Parser, Subcommand};

pub const EXIT_INVALID: u8 = 1;
pub const EXIT_REFUSED: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "aa-policyd",
    version,
    about = "Confine AI agents with eBPF; change their rules live from a policy YAML",
    long_about = None,
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a policy and show what it lowers to (exit 0 valid, 1 invalid).
    Check {
        /// Print the lowered rule set as JSON (schema in the README).
        #[arg(long)]
        json: bool,
        /// Syscall table to lower against (default: this machine's).
        #[arg(long, value_parser = parse_arch, default_value_t = Arch::native())]
        arch: Arch,
        /// The policy file.
        policy: PathBuf,
    },
    /// Show the text and rule-level change between two policies
    /// (exit 0 applicable, 3 refused by the safety guard, 1 invalid).
    Diff {
        /// Print the change as JSON.
        #[arg(long)]
        json: bool,
        /// Assume this many processes are confined when checking the guard.
        #[arg(long, default_value_t = 0)]
        confined: usize,
        /// Syscall table to lower against (default: this machine's).
        #[arg(long, value_parser = parse_arch, default_value_t = Arch::native())]
        arch: Arch,
        /// The policy in force.
        old: PathBuf,
        /// The proposed policy.
        new: PathBuf,
    },
    /// Run CMD confined by POLICY, standalone; exits with CMD's status
    /// (128 + signal when killed). Deny events go to stderr.
    Exec {
        /// The policy to enforce.
        #[arg(long)]
        policy: PathBuf,
        /// Where the probes' maps and links are pinned.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// The command and its arguments.
        #[arg(last = true, required = true, num_args = 1..)]
        command: Vec<OsString>,
    },
    /// Remove every program, link, map and pin aa-policyd created under
    /// the pin dir (stops enforcement for everything confined through it).
    Unload {
        /// Where the probes' maps and links are pinned.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

fn parse_arch(raw: &str) -> Result<Arch, String> {
    raw.parse()
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check { json, arch, policy } => Ok(check::run(&policy, arch, json)),
        Command::Diff {
            json,
            confined,
            arch,
            old,
            new,
        } => diff::run(&old, &new, arch, confined, json),
        Command::Exec {
            policy,
            pin_dir,
            command,
        } => exec::run(&policy, &pin_dir, &command),
        Command::Unload { pin_dir } => unload::run(&pin_dir),
    }
}
