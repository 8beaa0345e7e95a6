//! `aa-policyd generate-docs DIR` (hidden): writes the man page and the
//! bash/zsh completions, generated from the same clap definitions the binary
//! parses, so they cannot drift. Used by `packaging/build-deb.sh`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

use super::Cli;

pub fn run(dir: &Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // One page for `aa-policyd` and one per subcommand (`aa-policyd-run.1`,
    // ...), which the main page's SUBCOMMANDS section refers to.
    clap_mangen::generate_to(Cli::command(), dir).context("rendering the man pages")?;
    for (shell, name) in [
        (clap_complete::Shell::Bash, "aa-policyd.bash"),
        (clap_complete::Shell::Zsh, "_aa-policyd"),
    ] {
        let path = dir.join(name);
        let mut file =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        clap_complete::generate(shell, &mut Cli::command(), "aa-policyd", &mut file);
    }
    println!("wrote the man page and completions to {}", dir.display());
    Ok(ExitCode::SUCCESS)
}
