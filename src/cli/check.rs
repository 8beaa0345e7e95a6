//! `aa-policyd check`: is this policy valid, and what will the kernel enforce?

use std::path::Path;
use std::process::ExitCode;

use aa_policyd::lower::lower;
use aa_policyd::policy::Policy;
use aa_policyd::report;
use aa_policyd::ruleset::Arch;

use super::EXIT_INVALID;

pub fn run(path: &Path, arch: Arch, json: bool) -> ExitCode {
    let policy = match Policy::load(path) {
        Ok(policy) => policy,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let lowered = lower(&policy, arch);
    if json {
        println!("{:#}", report::lowered_json(&lowered));
    } else {
        let name = policy.name().map_or(String::new(), |n| format!(" ({n})"));
        println!("{}: valid{name}", path.display());
        for line in report::summary_lines(&lowered) {
            println!("  {line}");
        }
    }
    ExitCode::SUCCESS
}
