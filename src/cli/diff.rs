//! `aa-policyd diff`: what would change, in the text and in the kernel, if
//! NEW replaced OLD — and would the guard allow it.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use aa_policyd::delta::diff;
use aa_policyd::guard::{ConfinedSet, check_delta};
use aa_policyd::lower::lower;
use aa_policyd::policy::Policy;
use aa_policyd::report;
use aa_policyd::ruleset::Arch;
use anyhow::Context;
use serde_json::json;
use similar::{ChangeTag, TextDiff};

use super::{EXIT_INVALID, EXIT_REFUSED};

pub fn run(
    old_path: &Path,
    new_path: &Path,
    arch: Arch,
    confined: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (old, new) = match (Policy::load(old_path), Policy::load(new_path)) {
        (Ok(old), Ok(new)) => (old, new),
        (old, new) => {
            for error in [old.err(), new.err()].into_iter().flatten() {
                eprintln!("{error}");
            }
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    // Both files just parsed, so they are readable UTF-8.
    let old_text = std::fs::read_to_string(old_path)
        .with_context(|| format!("re-reading {}", old_path.display()))?;
    let new_text = std::fs::read_to_string(new_path)
        .with_context(|| format!("re-reading {}", new_path.display()))?;

    let applied = lower(&old, arch).rules;
    let desired = lower(&new, arch).rules;
    let delta = diff(&applied, &desired);
    let verdict = check_delta(&applied, &delta, &ConfinedSet::counted(confined), arch);
    let text_diff = TextDiff::from_lines(&old_text, &new_text);
    let unified = text_diff
        .unified_diff()
        .header(
            &old_path.display().to_string(),
            &new_path.display().to_string(),
        )
        .to_string();

    if json {
        let value = json!({
            "text_diff": unified,
            "ops": report::delta_json(&delta, &applied),
            "op_count": delta.len(),
            "refused": verdict.as_ref().err().map(ToString::to_string),
        });
        println!("{value:#}");
    } else {
        if std::io::stdout().is_terminal() {
            print_coloured(&text_diff, old_path, new_path);
        } else {
            print!("{unified}");
        }
        match delta.len() {
            0 => println!("rule changes: none"),
            n => println!("rule changes: {n} {}", if n == 1 { "op" } else { "ops" }),
        }
        for op in &delta.ops {
            println!("  {}", report::op_line(op, &applied));
        }
        if let Err(refusal) = &verdict {
            eprintln!("{refusal}");
        }
    }
    Ok(match verdict {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(EXIT_REFUSED),
    })
}

/// The unified diff with ANSI colours, for a terminal only.
fn print_coloured(text_diff: &TextDiff<'_, '_, str>, old_path: &Path, new_path: &Path) {
    println!(
        "\x1b[1m--- {}\n+++ {}\x1b[0m",
        old_path.display(),
        new_path.display()
    );
    for group in text_diff.grouped_ops(3) {
        if let (Some(first), Some(last)) = (group.first(), group.last()) {
            let old = first.old_range().start..last.old_range().end;
            let new = first.new_range().start..last.new_range().end;
            println!(
                "\x1b[36m@@ -{},{} +{},{} @@\x1b[0m",
                old.start + 1,
                old.len(),
                new.start + 1,
                new.len()
            );
        }
        for op in &group {
            for change in text_diff.iter_changes(op) {
                let (sign, colour) = match change.tag() {
                    ChangeTag::Delete => ('-', "\x1b[31m"),
                    ChangeTag::Insert => ('+', "\x1b[32m"),
                    ChangeTag::Equal => (' ', ""),
                };
                let reset = if colour.is_empty() { "" } else { "\x1b[0m" };
                print!("{colour}{sign}{change}{reset}");
                if change.missing_newline() {
                    println!();
                }
            }
        }
    }
}
