//! What docs/scale-out.md says happens when the database goes away, checked against a real
//! server that is stopped and started again in the middle of the work: a server of the test's
//! own (started by scripts/with-postgres.sh), since the shared one of `WIGGUM_TEST_PG_URL` must
//! not go away under the other tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::queue::{NewJob, Queue};
use crate::ledger::{Ledger, LedgerError, NewBead};
use crate::pg::DbUrl;

/// A PostgreSQL server for one test, stopped and removed when dropped.
struct OwnServer {
    url: DbUrl,
    ctl: PathBuf,
    child: Child,
    keep: PathBuf,
    _dir: tempfile::TempDir,
}

impl OwnServer {
    /// `None` (a loud skip; a failure in CI) where the shared test server is not set either,
    /// i.e. where PostgreSQL is not installed.
    fn start(test: &str) -> Option<OwnServer> {
        crate::pg::testing::server_url(test)?;
        let dir = tempfile::tempdir().unwrap();
        let keep = dir.path().join("keep");
        let info = dir.path().join("info");
        std::fs::write(&keep, "").unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/with-postgres.sh");
        let child = Command::new(script)
            .env_remove("WIGGUM_TEST_PG_URL")
            .arg("sh")
            .arg("-c")
            .arg(
                "printf '%s\\n%s\\n' \"$WIGGUM_TEST_PG_URL\" \"$WIGGUM_TEST_PG_CTL\" > \"$1.tmp\" \
                 && mv \"$1.tmp\" \"$1\"; while [ -e \"$2\" ]; do sleep 0.1; done",
            )
            .arg("sh")
            .arg(&info)
            .arg(&keep)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("scripts/with-postgres.sh runs");
        let deadline = Instant::now() + Duration::from_secs(120);
        let text = loop {
            if let Ok(text) = std::fs::read_to_string(&info) {
                break text;
            }
            assert!(
                Instant::now() < deadline,
                "{test}: the own server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut lines = text.lines();
        let (url, ctl) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
        assert!(
            !url.is_empty() && !ctl.is_empty(),
            "{test}: scripts/with-postgres.sh started no server of its own"
        );
        Some(OwnServer {
            url: DbUrl::parse(url).unwrap(),
            ctl: PathBuf::from(ctl),
            child,
            keep,
            _dir: dir,
        })
    }

    fn ctl(&self, what: &str) {
        let out = Command::new(&self.ctl).arg(what).output().unwrap();
        assert!(
            out.status.success(),
            "pg_ctl {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.keep);
        let _ = self.child.wait();
    }
}

fn job(n: usize) -> NewJob {
    NewJob {
        bead: format!("wg-r.1.{n}"),
        step_bead: "wg-r.1".into(),
        run_id: "wg-r".into(),
        spec: "{}".into(),
    }
}

/// A repository whose ledger is on the server's database.
fn pg_repo(url: &DbUrl) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    crate::remote::testing::git(dir.path(), &["init", "-q", "-b", "main"]);
    std::fs::create_dir_all(dir.path().join(".wiggum")).unwrap();
    std::fs::write(
        dir.path().join(".wiggum/config.toml"),
        format!(
            "[ledger]\nbackend = \"postgres\"\nurl = \"{}\"\nrepository = \"restart\"\n",
            url.secret()
        ),
    )
    .unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_leases_and_the_ledger_go_on_after_the_database_restarts() {
    let Some(server) = OwnServer::start("database restart") else {
        return;
    };
    let queue = Queue::new(crate::pg::pool(&server.url, 4).unwrap(), &server.url);
    queue.install().await.unwrap();
    for n in 1..=3 {
        queue.publish("repo", &job(n)).await.unwrap();
    }
    let ttl = Duration::from_secs(30);
    let first = queue.claim("repo", "m1/nux", ttl).await.unwrap().unwrap();
    let mut keeper = crate::pg::lease::keep(
        queue.leases().clone(),
        first.lease.clone(),
        ttl,
        Duration::from_millis(200),
    );
    let repo = pg_repo(&server.url);
    let root = repo.path().to_path_buf();
    let ledger = tokio::task::spawn_blocking(move || {
        let mut ledger = Ledger::open(&root).unwrap();
        ledger.create(NewBead::task("before the outage")).unwrap();
        ledger
    })
    .await
    .unwrap();

    // The database goes away.
    server.ctl("stop");
    let err = queue
        .claim("repo", "m1/slit", ttl)
        .await
        .expect_err("no claim while the database is down");
    let text = err.to_string();
    assert!(text.contains("127.0.0.1"), "names the database: {text}");
    let (mut ledger, err) = tokio::task::spawn_blocking(move || {
        let mut ledger = ledger;
        let err = ledger
            .create(NewBead::task("during the outage"))
            .unwrap_err();
        (ledger, err)
    })
    .await
    .unwrap();
    let text = err.to_string();
    assert!(
        matches!(err, LedgerError::Remote { .. })
            && text.contains("is the PostgreSQL server running and reachable?")
            && text.contains("Nothing recorded before is lost"),
        "{text}"
    );
    // Renewals fail meanwhile; shorter than the lease, the outage does not lose it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!keeper.is_lost(), "a short outage lost the lease");

    // Back: every part reconnects by itself and goes on, and nothing recorded was lost.
    server.ctl("start");
    let second = queue
        .claim("repo", "m1/slit", ttl)
        .await
        .unwrap()
        .expect("claims go on");
    assert_eq!(second.job.bead, "wg-r.1.2");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !keeper.is_lost(),
        "the lease was renewed again after the restart"
    );
    assert!(queue.leases().is_held(&first.lease).await.unwrap());
    assert!(
        queue.finish(&first, "{\"ok\":true}").await.unwrap(),
        "the fenced finish of a claim taken before the outage holds"
    );
    let beads = tokio::task::spawn_blocking(move || {
        ledger.create(NewBead::task("after the outage")).unwrap();
        ledger.list(&Default::default()).unwrap()
    })
    .await
    .unwrap();
    let titles: Vec<&str> = beads.iter().map(|b| b.title.as_str()).collect();
    assert!(titles.contains(&"before the outage"), "{titles:?}");
    assert!(titles.contains(&"after the outage"), "{titles:?}");
    assert!(!titles.contains(&"during the outage"), "{titles:?}");
    // Every job claimed once: the third, then nothing.
    let third = queue.claim("repo", "m2/x", ttl).await.unwrap().unwrap();
    assert_eq!(third.job.bead, "wg-r.1.3");
    assert!(queue.claim("repo", "m2/x", ttl).await.unwrap().is_none());
    let _ = tokio::time::timeout(Duration::from_millis(10), keeper.lost()).await;
}
