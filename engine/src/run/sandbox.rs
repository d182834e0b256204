//! Sandbox copies: a patrol with `sandbox = true` (the offline demo) runs on a fresh git
//! repository made from a copy of its `repo`, in the temp directory, so it never touches the
//! original. The copy is kept after the run so its beads can be looked at.

use std::path::{Path, PathBuf};

use crate::workspace::WorkspaceError;

/// Copies `source` (without its `.git`, `.wiggum` and `.beads`) into a new directory under the
/// temp directory, makes it a git repository on branch `main` with one commit, and returns it.
pub fn prepare(source: &Path) -> Result<PathBuf, WorkspaceError> {
    let name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "repo".into());
    let dir = tempfile::Builder::new()
        .prefix(&format!("wiggum-sandbox-{name}-"))
        .tempdir()
        .map_err(|e| io("cannot create a temp directory", e))?
        .keep();
    copy_tree(source, &dir)?;
    let repo = git2::Repository::init_opts(
        &dir,
        git2::RepositoryInitOptions::new().initial_head("main"),
    )?;
    let mut index = repo.index()?;
    index.add_all(["*"].iter(), git2::IndexAddOption::DEFAULT, None)?;
    index.write()?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let sig = repo
        .signature()
        .or_else(|_| git2::Signature::now("wiggum", "wiggum@localhost"))?;
    repo.commit(
        Some("HEAD"),
        &sig,
        &sig,
        &format!("sandbox copy of {}", source.display()),
        &tree,
        &[],
    )?;
    Ok(dir.canonicalize().unwrap_or(dir))
}

fn io(context: &str, source: std::io::Error) -> WorkspaceError {
    WorkspaceError::Io {
        context: context.to_string(),
        source,
    }
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), WorkspaceError> {
    let entries =
        std::fs::read_dir(from).map_err(|e| io(&format!("cannot read {}", from.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io(&format!("cannot read {}", from.display()), e))?;
        let name = entry.file_name();
        if matches!(name.to_str(), Some(".git" | ".wiggum" | ".beads")) {
            continue;
        }
        let src = entry.path();
        let dst = to.join(&name);
        let kind = entry
            .file_type()
            .map_err(|e| io(&format!("cannot stat {}", src.display()), e))?;
        if kind.is_dir() {
            std::fs::create_dir_all(&dst)
                .map_err(|e| io(&format!("cannot create {}", dst.display()), e))?;
            copy_tree(&src, &dst)?;
        } else if kind.is_file() {
            std::fs::copy(&src, &dst)
                .map_err(|e| io(&format!("cannot copy {}", src.display()), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_is_a_fresh_repository_with_the_files_and_without_git_state() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("src")).unwrap();
        std::fs::write(src.path().join("src/lib.rs"), "fn a() {}\n").unwrap();
        std::fs::create_dir_all(src.path().join(".beads")).unwrap();
        std::fs::write(src.path().join(".beads/issues.jsonl"), "x\n").unwrap();
        let dir = prepare(src.path()).unwrap();
        assert!(dir.join("src/lib.rs").exists());
        assert!(!dir.join(".beads").exists());
        let repo = git2::Repository::open(&dir).unwrap();
        assert_eq!(repo.head().unwrap().shorthand(), Some("main"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
