//! The HTML report in a real headless browser (Debian's `chromium`): it loads from disk with no
//! console error and no network request, every plot draws (a canvas with pixels), nothing is
//! wider than a laptop screen, in light and dark mode. In CI (CI=true) a missing chromium
//! fails the test.

mod common;

use std::path::Path;
use std::process::Command;

use common::{in_ci, write_patrol, TempRepo};

/// Injected before the report's own scripts: records console errors, failed loads, blocked
/// requests, and after load what the page drew, into `<body data-probe>`.
const PROBE: &str = r#"<script>
(function () {
  var errors = [], violations = [];
  var oe = console.error;
  console.error = function () { errors.push(Array.prototype.join.call(arguments, " ")); oe.apply(console, arguments); };
  window.addEventListener("error", function (e) { errors.push("error: " + (e.message || (e.target && (e.target.src || e.target.href)) || e.type)); }, true);
  window.addEventListener("unhandledrejection", function (e) { errors.push("rejection: " + e.reason); });
  document.addEventListener("securitypolicyviolation", function (e) { violations.push(e.blockedURI + " " + e.violatedDirective); });
  window.addEventListener("load", function () {
    setTimeout(function () {
      var plots = document.querySelectorAll(".plot"), drawn = 0, empty = [];
      for (var k = 0; k < plots.length; k++) {
        var c = plots[k].querySelector("canvas"), ok = false;
        if (c && c.width > 0 && c.height > 0) {
          var d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
          for (var i = 3; i < d.length; i += 4) { if (d[i] !== 0) { ok = true; break; } }
        }
        if (ok) { drawn++; } else { empty.push(plots[k].getAttribute("data-step") + "/" + plots[k].getAttribute("data-kind")); }
      }
      var root = document.documentElement;
      document.body.setAttribute("data-probe", JSON.stringify({
        errors: errors, violations: violations,
        resources: performance.getEntriesByType("resource").map(function (r) { return r.name; }),
        plots: plots.length, drawn: drawn, empty: empty,
        overflow: root.scrollWidth - root.clientWidth,
        background: getComputedStyle(document.body).backgroundColor,
        rendered: document.body.getAttribute("data-plots")
      }));
    }, 300);
  });
})();
</script>"#;

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Loads `page` in headless chromium and returns the probe's findings.
fn probe(browser: &str, page: &Path, dark: bool) -> serde_json::Value {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()));
    if dark {
        cmd.arg("--blink-settings=preferredColorScheme=0");
    }
    let out = cmd
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout);
    let start = dom.find("data-probe=\"").unwrap_or_else(|| {
        panic!(
            "the probe did not report (page did not load?):\n{}\n--- stderr\n{}",
            &dom[..dom.len().min(2000)],
            String::from_utf8_lossy(&out.stderr)
        )
    }) + "data-probe=\"".len();
    let end = start + dom[start..].find('"').unwrap();
    let json = dom[start..end]
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("probe JSON ({e}): {json}"))
}

const PATROL: &str = r#"
[patrol]
name = "browser"
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "fix"
agent = "s"
prompt = "write fixed.txt"
[steps.loop]
checks = ["test -f fixed.txt", "true"]
review = "self"
max_iterations = 4
[[steps]]
id = "stuck"
agent = "s"
prompt = "never passes"
[steps.loop]
checks = ["echo '<b>not markup</b> a-very-long-unbroken-output-line-that-must-wrap-instead-of-widening-the-page-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'; exit 1"]
max_iterations = 2
"#;

const SCRIPT: &str = r#"
[[work]]
step = "fix"
reply = "first try"
[[work]]
step = "fix"
reply = "wrote fixed.txt <promise>DONE</promise>"
[[work.edits]]
path = "fixed.txt"
write = "fixed\n"
[[work]]
step = "fix"
reply = "added a test"
[[work.edits]]
path = "more.txt"
write = "more\n"
[[review]]
step = "fix"
reply = '{"approved": false, "findings": ["add a test"]}'
[[review]]
step = "fix"
reply = '{"approved": true, "findings": []}'
[[work]]
step = "stuck"
reply = "tried"
[[work]]
step = "stuck"
reply = "tried again"
"#;

#[test]
fn the_html_report_loads_offline_without_errors_and_draws_every_plot() {
    let Some(browser) = chromium() else {
        if in_ci() {
            panic!("chromium is needed in CI (.ci/install-report-tools.sh installs it)");
        }
        eprintln!("\n!!! SKIPPED the browser check: chromium is not installed (apt-get install chromium)\n");
        return;
    };
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let patrol = write_patrol(defs.path(), PATROL, SCRIPT)
        .display()
        .to_string();
    let repo_dir = repo.path().display().to_string();
    let run = repo.wiggum(&["run", &patrol, "--repo", &repo_dir, "--json"]);
    let run_id = run.json()["run_id"].as_str().unwrap().to_string();
    let out_dir = tempfile::tempdir().unwrap();
    let page = out_dir.path().join("report.html");
    let made = repo.wiggum(&[
        "report",
        &run_id,
        "--format",
        "html",
        "-o",
        page.to_str().unwrap(),
    ]);
    assert_eq!(made.code, 0, "{}", made.stderr);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("&lt;b&gt;not markup&lt;/b&gt;"),
        "check output is escaped"
    );
    let probed = out_dir.path().join("probed.html");
    std::fs::write(
        &probed,
        html.replacen("<head>", &format!("<head>{PROBE}"), 1),
    )
    .unwrap();

    for dark in [false, true] {
        let p = probe(browser, &probed, dark);
        assert_eq!(
            p["errors"],
            serde_json::json!([]),
            "console errors ({dark}): {p}"
        );
        assert_eq!(
            p["violations"],
            serde_json::json!([]),
            "blocked requests: {p}"
        );
        assert_eq!(
            p["resources"],
            serde_json::json!([]),
            "network requests: {p}"
        );
        // fix and stuck: two plots each.
        assert_eq!(p["plots"], 4, "{p}");
        assert_eq!(p["drawn"], 4, "empty plots: {p}");
        assert_eq!(p["rendered"], "4", "{p}");
        assert!(
            p["overflow"].as_i64().unwrap() <= 0,
            "wider than the window: {p}"
        );
        let background = p["background"].as_str().unwrap().to_string();
        if dark {
            assert_eq!(background, "rgb(15, 18, 24)", "dark mode: {p}");
        } else {
            assert_eq!(background, "rgb(255, 255, 255)", "light mode: {p}");
        }
    }
}
