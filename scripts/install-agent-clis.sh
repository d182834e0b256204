#!/usr/bin/env bash
# Installs the agent CLIs the real-CLI tests drive (agents/tests/real_clis.rs) from the npm
# registry into a cache directory: $WIGGUM_CLI_CACHE, default ~/.cache/wiggum/agent-clis.
# Versions are pinned here; the tests and the recorded fixtures name the same versions.
# Re-running is cheap: nothing is downloaded when the pinned versions are already there.
set -euo pipefail

CLAUDE_CODE_VERSION=2.1.332   # @anthropic-ai/claude-code (with its native platform package)
CODEX_VERSION=0.171.0         # @openai/codex (with its native platform package)
GEMINI_CLI_VERSION=0.61.0     # @google/gemini-cli

cache="${WIGGUM_CLI_CACHE:-$HOME/.cache/wiggum/agent-clis}"
want="claude-code@$CLAUDE_CODE_VERSION codex@$CODEX_VERSION gemini-cli@$GEMINI_CLI_VERSION"
mkdir -p "$cache"
if [ "$(cat "$cache/.installed" 2>/dev/null)" = "$want" ] &&
    [ -x "$cache/node_modules/.bin/claude" ] && [ -x "$cache/node_modules/.bin/codex" ] &&
    [ -x "$cache/node_modules/.bin/gemini" ]; then
    echo "agent CLIs already installed in $cache ($want)"
    exit 0
fi
command -v npm >/dev/null || { echo "install-agent-clis: npm is needed (install Node.js 20+)" >&2; exit 1; }
echo "installing $want into $cache"
# npm pulls each CLI's native package for this platform through its optionalDependencies.
npm install --prefix "$cache" --no-audit --no-fund --loglevel=error \
    "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" \
    "@openai/codex@$CODEX_VERSION" \
    "@google/gemini-cli@$GEMINI_CLI_VERSION"
for cli in claude codex gemini; do
    "$cache/node_modules/.bin/$cli" --version >/dev/null
done
echo "$want" > "$cache/.installed"
echo "agent CLIs installed: $("$cache/node_modules/.bin/claude" --version), $("$cache/node_modules/.bin/codex" --version), gemini $("$cache/node_modules/.bin/gemini" --version)"
