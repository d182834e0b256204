//! End-to-end tests of the checkpoints' looks limited to where the kernel saw writes
//! (docs/workspace.md, "Checkpoints"): what lands is what the checks passed on.

mod common;

use common::TempRepo;

/// An agent that makes `src/parser/mod.txt` (v1) in a new folder in its first iteration and
/// edits it (v2) in its second; the check wants v2.
fn two_iteration_agent(dir: &std::path::Path) -> String {
    let script = dir.join("agent.sh");
    let count = dir.join("count");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             n=$(cat '{count}' 2>/dev/null || echo 0); n=$((n+1)); echo $n > '{count}'\n\
             cat >/dev/null\n\
             if [ $n = 1 ]; then mkdir -p src/parser && echo v1 > src/parser/mod.txt;\n\
             else echo v2 > src/parser/mod.txt; fi\n\
             echo \"done $n\"\n",
            count = count.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script.to_string_lossy().into_owned()
}

fn lands_the_edit_of_the_second_iteration(env: &[(&str, &str)]) {
    let repo = TempRepo::new();
    let scratch = tempfile::tempdir().unwrap();
    let agent = two_iteration_agent(scratch.path());
    let out = repo.wiggum_env(
        &[
            "task",
            "write the parser",
            "--agent-command",
            &agent,
            "--check",
            "grep -q v2 src/parser/mod.txt",
            "--max-iterations",
            "3",
        ],
        env,
    );
    assert_eq!(
        out.code, 0,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    assert_eq!(
        repo.git(&["show", "HEAD:src/parser/mod.txt"]),
        "v2\n",
        "what landed is not what the check passed on\nstderr: {}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("work in no checkpoint"),
        "work was left out of the checkpoints: {}",
        out.stderr
    );
}

/// review-s4-walks, finding 1: a folder made in iteration 1 was committed by that iteration's
/// checkpoint (a full look) but never watched, so iteration 2's edit in it was not
/// checkpointed and iteration 1's file landed.
#[test]
fn an_edit_in_a_folder_made_by_the_previous_iteration_is_what_lands() {
    lands_the_edit_of_the_second_iteration(&[]);
}

/// The same with the limited looks turned off (`WIGGUM_WATCHED_LOOKS=0`): every checkpoint
/// looks at every file.
#[test]
fn with_watched_looks_off_the_edit_of_the_second_iteration_lands_too() {
    lands_the_edit_of_the_second_iteration(&[("WIGGUM_WATCHED_LOOKS", "0")]);
}
