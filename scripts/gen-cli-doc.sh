#!/usr/bin/env bash
# Regenerates docs/cli.md from the binary's own help texts.
set -euo pipefail
W=${1:-./target/debug/wiggum}
{
  echo "# wiggum command line reference"
  echo
  echo "Generated from \`wiggum <command> --help\` (tests/docs.rs fails when this page and the"
  echo "binary disagree; regenerate with \`scripts/gen-cli-doc.sh\`)."
  echo
  echo "Exit codes, for every command: 0 converged (or done), 1 ran but did not converge or failed,"
  echo "2 usage or definition error, 130 interrupted (Ctrl-C). \`WIGGUM_LOG=debug\` turns on logs"
  echo "(on stderr)."
  echo
  echo "With \`--json\`, a command that fails before it can give its result (a bad flag, a missing"
  echo "repository, an invalid patrol, an unknown run) prints the human error on stderr and one JSON"
  echo "object on stdout: \`{\"error\": \"...\", \"causes\": [...], \"hints\": [...], \"exit_code\": 2}\`,"
  echo "with \`problems\` (each \`{file, line, col, message, hint}\`, as \`wiggum validate --json\`"
  echo "gives them) for an invalid patrol."
  echo
  echo '## wiggum'
  echo
  echo '```text'
  $W --help
  echo '```'
  for c in task run validate resume runs show beads "beads list" "beads show" "beads ready" daemon schedule "schedule pause" "schedule resume" "schedule run" "schedule give-up" report polecats; do
    echo
    echo "## wiggum $c"
    echo
    echo '```text'
    $W $c --help
    echo '```'
  done
} > docs/cli.md
