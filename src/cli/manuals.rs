//! `vramguard completions SHELL` and `vramguard man`: shell completions and man pages generated
//! from the command line's own grammar (the clap definitions in `mod.rs`), so that they can
//! never disagree with it. The wheel carries their output (`share/man/man1`, and each shell's
//! completion directory); `docs/usage.md` says where to put them by hand.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use clap::ValueEnum;

/// `completions` values: the shells clap_complete writes for.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletionShell {
    /// bash (bash-completion)
    Bash,
    /// zsh
    Zsh,
    /// fish
    Fish,
    /// elvish
    Elvish,
    /// PowerShell
    Powershell,
}

impl CompletionShell {
    fn generator(self) -> clap_complete::Shell {
        match self {
            CompletionShell::Bash => clap_complete::Shell::Bash,
            CompletionShell::Zsh => clap_complete::Shell::Zsh,
            CompletionShell::Fish => clap_complete::Shell::Fish,
            CompletionShell::Elvish => clap_complete::Shell::Elvish,
            CompletionShell::Powershell => clap_complete::Shell::PowerShell,
        }
    }
}

/// The completion script of `command` for `shell`.
pub fn completion_script(shell: CompletionShell, mut command: clap::Command) -> Vec<u8> {
    let name = command.get_name().to_string();
    let mut out = Vec::new();
    clap_complete::generate(shell.generator(), &mut command, name, &mut out);
    out
}

/// The man pages of `command`: its own (`vramguard.1`) first, then one per visible subcommand
/// (`vramguard-run.1`...), as (file name, roff text).
pub fn man_pages(command: clap::Command) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut command = command;
    command.build();
    let name = command.get_name().to_string();
    let mut pages = Vec::new();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut page)?;
    pages.push((format!("{name}.1"), page));
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let full = format!("{name}-{}", sub.get_name());
        let sub = sub.clone().name(full.clone());
        let mut page = Vec::new();
        clap_mangen::Man::new(sub).render(&mut page)?;
        pages.push((format!("{full}.1"), page));
    }
    Ok(pages)
}

/// `vramguard completions SHELL`.
pub fn print_completions(shell: CompletionShell, command: clap::Command) -> i32 {
    let script = completion_script(shell, command);
    let mut stdout = io::stdout().lock();
    // A closed pipe is not an error of ours.
    let _ = stdout.write_all(&script).and_then(|()| stdout.flush());
    0
}

/// `vramguard man [--output DIR]`: the main page on stdout, or every page into DIR.
pub fn man(command: clap::Command, output: Option<&Path>) -> i32 {
    let pages = match man_pages(command) {
        Ok(pages) => pages,
        Err(e) => {
            eprintln!("vramguard man: {e}");
            return 1;
        }
    };
    let Some(dir) = output else {
        let mut stdout = io::stdout().lock();
        let _ = stdout.write_all(&pages[0].1).and_then(|()| stdout.flush());
        return 0;
    };
    let written = fs::create_dir_all(dir).and_then(|()| {
        pages
            .iter()
            .try_for_each(|(file, text)| fs::write(dir.join(file), text))
    });
    match written {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("vramguard man: cannot write into {}: {e}", dir.display());
            1
        }
    }
}
