//! The CLI reference (docs/cli.md) must say what the binary says.

mod common;

#[test]
fn docs_cli_md_holds_every_commands_current_help() {
    let doc_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md");
    let doc = std::fs::read_to_string(&doc_path).expect("docs/cli.md exists");
    for cmd in [
        "",
        "task",
        "run",
        "validate",
        "resume",
        "runs",
        "show",
        "beads",
        "beads list",
        "beads show",
        "beads ready",
        "daemon",
        "schedule",
        "schedule pause",
        "schedule resume",
        "schedule run",
        "schedule give-up",
        "report",
        "polecats",
    ] {
        let mut args: Vec<&str> = cmd.split_whitespace().collect();
        args.push("--help");
        let out = common::wiggum_command().args(&args).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            doc.contains(help.trim_end()),
            "docs/cli.md is out of date for `wiggum {cmd}`: run scripts/gen-cli-doc.sh"
        );
    }
}
