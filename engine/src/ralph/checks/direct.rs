//! The fast path of a check: a command that is a plain list of words runs without a shell, as
//! GNU make runs a recipe line without one when it has no shell syntax. It saves a shell
//! process (about a millisecond of CPU) per check, which counts when eight polecats run their
//! checks at the same moment on two cores.
//!
//! A command is run directly only when the shell would do nothing but split it on spaces and
//! run the program it names, so the result is the same:
//! - every character is an ASCII letter or digit, a space, or one of `-_./,:=+@%`: no quote,
//!   backslash, `$`, backquote, glob (`*?[`), brace, tilde, comment, `!`, redirection,
//!   operator (`&|;<>()`), tab, newline or non-ASCII byte;
//! - the first word is not an assignment (`A=b cmd`: it holds a `=`), not a reserved word
//!   (`if`, `for`, `while`, `time`, ...), not a builtin of the shell (`cd`, `exit`, `export`,
//!   `.`, `:`, `command`, `printf`, `pwd`, `kill`, ..., those of bash too), and not a function
//!   bash would import from the environment (`BASH_FUNC_<name>%%`). `true`, `false` and `echo`
//!   run as the programs of the same name only when no argument starts with `-` (where
//!   coreutils' versions read `--help` or `-e`); `test` runs as `/usr/bin/test`;
//! - the program is found: a word with a `/` is a path from the check's directory, a bare word
//!   is looked up on `PATH` (relative entries from the check's directory too) for an executable
//!   regular file. When it is not found, is not executable, `PATH` is unset or names a dash
//!   `%func` entry, the shell runs the command after all and says what is wrong (exit 127 or
//!   126, with its own message), exactly as before.
//!
//! The program gets the shell's argv[0] (the word as written) and the `PWD` a shell would
//! export: the inherited one when it names the check's directory, otherwise its physical path.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// Punctuation a plain command may hold besides ASCII letters, digits and spaces.
const PLAIN_PUNCTUATION: &[u8] = b"-_./,:=+@%";

/// Words that make the shell do something else than run a program: reserved words and the
/// builtins of dash and bash (whatever `/bin/sh` is), except the four below.
const SHELL_WORDS: &[&str] = &[
    // Reserved words (those with punctuation, `!`, `{`, `[[`, cannot reach here).
    "case",
    "coproc",
    "do",
    "done",
    "elif",
    "else",
    "esac",
    "fi",
    "for",
    "function",
    "if",
    "in",
    "select",
    "then",
    "time",
    "until",
    "while", // Special builtins.
    ".",
    ":",
    "break",
    "continue",
    "eval",
    "exec",
    "exit",
    "export",
    "readonly",
    "return",
    "set",
    "shift",
    "times",
    "trap",
    "unset", // Other builtins of dash.
    "alias",
    "bg",
    "cd",
    "chdir",
    "command",
    "fc",
    "fg",
    "getopts",
    "hash",
    "jobs",
    "kill",
    "local",
    "printf",
    "pwd",
    "read",
    "type",
    "ulimit",
    "umask",
    "unalias",
    "wait",
    // Builtins of bash.
    "bind",
    "builtin",
    "caller",
    "compgen",
    "complete",
    "compopt",
    "declare",
    "dirs",
    "disown",
    "enable",
    "help",
    "history",
    "let",
    "logout",
    "mapfile",
    "popd",
    "pushd",
    "readarray",
    "shopt",
    "source",
    "suspend",
    "typeset",
    // Programs that behave differently as a shell's child: dash's `test` builtin refuses what
    // coreutils' `test` accepts (`test a == a`: exit 2 against 0); `setsid` forks when it
    // leads its process group (run without a shell, it would: `setsid false` passes, and
    // `setsid sleep 9` returns at once, its `sleep` out of the timeout's reach).
    "test",
    "setsid",
];

/// Builtins that behave as the programs of the same name as long as no argument starts with `-`.
const PROGRAM_BUILTINS: &[&str] = &["true", "false", "echo"];

/// The words of a command the shell would only split on spaces, or `None` when it has any
/// shell syntax or its first word means something to the shell.
pub(super) fn plain_words(command: &str) -> Option<Vec<&str>> {
    let plain = command
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b' ' || PLAIN_PUNCTUATION.contains(&b));
    if !plain {
        return None;
    }
    let words: Vec<&str> = command.split(' ').filter(|w| !w.is_empty()).collect();
    let first = *words.first()?;
    if first.contains('=') || SHELL_WORDS.contains(&first) {
        return None;
    }
    if PROGRAM_BUILTINS.contains(&first) && words[1..].iter().any(|w| w.starts_with('-')) {
        return None;
    }
    Some(words)
}

/// How to run a plain command without a shell.
#[derive(Debug)]
pub(super) struct Direct {
    /// The absolute path of the program found.
    pub program: String,
    /// The words as written; the first is the program's argv[0].
    pub words: Vec<String>,
    /// The `PWD` the shell would have exported.
    pub pwd: String,
}

/// The value `env` (added to the inherited environment, the last one winning) gives `name`.
fn var(env: &[(String, String)], name: &str) -> Option<OsString> {
    env.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| OsString::from(v))
        .or_else(|| std::env::var_os(name))
}

/// Whether a path is a regular file this process may execute.
fn executable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    if !path.metadata().is_ok_and(|m| m.is_file()) {
        return false;
    }
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access only reads the NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
}

/// Finds the program the shell would run for `word` in `dir`.
fn find(word: &str, dir: &Path, env: &[(String, String)]) -> Option<PathBuf> {
    if word.contains('/') {
        let path = dir.join(word);
        return executable(&path).then_some(path);
    }
    let path = var(env, "PATH")?;
    let path = path.to_str()?;
    if path.contains('%') {
        return None;
    }
    path.split(':')
        .map(|entry| {
            dir.join(if entry.is_empty() { "." } else { entry })
                .join(word)
        })
        .find(|p| executable(p))
}

/// The `PWD` a shell started in `dir` exports: the inherited one when it is absolute and names
/// `dir`, otherwise the physical path of `dir` (what `getcwd` gives).
fn shell_pwd(dir: &Path, env: &[(String, String)]) -> Option<OsString> {
    let here = dir.metadata().ok()?;
    if let Some(pwd) = var(env, "PWD") {
        let same = Path::new(&pwd).is_absolute()
            && Path::new(&pwd)
                .metadata()
                .is_ok_and(|m| m.dev() == here.dev() && m.ino() == here.ino());
        if same {
            return Some(pwd);
        }
    }
    dir.canonicalize().ok().map(PathBuf::into_os_string)
}

/// How to run `command` in `dir` without a shell, or `None` when a shell must run it.
pub(super) fn plan(command: &str, dir: &Path, env: &[(String, String)]) -> Option<Direct> {
    let words = plain_words(command)?;
    if var(env, &format!("BASH_FUNC_{}%%", words[0])).is_some() {
        return None;
    }
    let mut program = find(words[0], dir, env)?;
    if program.is_relative() {
        // A relative program path is ambiguous with a working directory set for the child.
        program = std::env::current_dir().ok()?.join(program);
    }
    // Paths that are not UTF-8 are left to the shell (the process spec holds text).
    Some(Direct {
        program: program.into_os_string().into_string().ok()?,
        words: words.into_iter().map(str::to_string).collect(),
        pwd: shell_pwd(dir, env)?.into_string().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_word_list_is_split_on_spaces() {
        assert_eq!(
            plain_words("  cargo test --workspace -p a_b.c,d:e=f+g@h%i/j  "),
            Some(vec![
                "cargo",
                "test",
                "--workspace",
                "-p",
                "a_b.c,d:e=f+g@h%i/j"
            ])
        );
        assert_eq!(
            plain_words("./scripts/check"),
            Some(vec!["./scripts/check"])
        );
        assert_eq!(plain_words("test -f Cargo.toml"), None);
        assert_eq!(plain_words("setsid sleep 9"), None);
        assert_eq!(plain_words("true"), Some(vec!["true"]));
        assert_eq!(plain_words("echo ok"), Some(vec!["echo", "ok"]));
    }

    #[test]
    fn any_shell_syntax_needs_the_shell() {
        for special in [
            "\"", "'", "\\", "$", "`", "&", "|", ";", "<", ">", "(", ")", "*", "?", "[", "]", "{",
            "}", "~", "#", "!", "\n", "\t", "^", "é",
        ] {
            for command in [
                format!("cargo test {special}x"),
                format!("cargo{special} test"),
                format!("{special}cargo test"),
                format!("cargo test{special}"),
            ] {
                assert_eq!(plain_words(&command), None, "{command:?}");
            }
        }
    }

    #[test]
    fn an_empty_command_needs_the_shell() {
        assert_eq!(plain_words(""), None);
        assert_eq!(plain_words("   "), None);
    }

    #[test]
    fn assignments_reserved_words_and_builtins_need_the_shell() {
        for command in [
            "RUST_LOG=debug cargo test",
            "A= cargo test",
            "if true",
            "for x in a b",
            "time cargo test",
            "cd sub",
            "exit 3",
            "export A",
            ". ./env.sh",
            ": nothing",
            "command -v cargo",
            "exec cargo test",
            "printf %s x",
            "pwd",
            "kill 1",
            "umask",
            "source env.sh",
            "echo -n x",
            "echo -e x",
            "true --help",
            "false --version",
        ] {
            assert_eq!(plain_words(command), None, "{command:?}");
        }
        // An `=` past the first word is an argument.
        assert!(plain_words("cargo test --features=x").is_some());
    }

    #[test]
    fn the_program_is_found_on_path_from_the_check_directory() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        let tool = dir.path().join("bin/tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = dir.path().join("bin/plain");
        std::fs::write(&plain, "").unwrap();
        let env = vec![("PATH".to_string(), "/nonexistent:bin".to_string())];
        let tool = plan("tool a b", dir.path(), &env).unwrap();
        assert_eq!(
            tool.program,
            dir.path().join("bin/tool").display().to_string()
        );
        assert_eq!(tool.words, vec!["tool", "a", "b"]);
        assert!(plan("bin/tool", dir.path(), &env).is_some());
        // Not executable, missing, or a directory: the shell says what is wrong.
        assert!(plan("plain", dir.path(), &env).is_none());
        assert!(plan("bin/plain", dir.path(), &env).is_none());
        assert!(plan("missing", dir.path(), &env).is_none());
        let here = vec![("PATH".to_string(), ":.".to_string())];
        assert!(plan("bin", dir.path(), &here).is_none());
        assert!(plan("bin/tool", dir.path(), &here).is_some());
        // A dash `%func` entry in PATH.
        let env = vec![("PATH".to_string(), "bin%func".to_string())];
        assert!(plan("tool", dir.path(), &env).is_none());
    }

    #[test]
    fn a_function_bash_would_import_needs_the_shell() {
        let dir = tempfile::tempdir().unwrap();
        let env = vec![("BASH_FUNC_cat%%".to_string(), "() { :; }".to_string())];
        assert!(plan("cat x", dir.path(), &[]).is_some());
        assert!(plan("cat x", dir.path(), &env).is_none());
    }
}
