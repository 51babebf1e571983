//! `make run`'s promise to a new user (README, CONTRACT §1): the commands it prints work as
//! printed on a machine that has only what `make test` installs (npm, curl).

use ryze_tests::{eventually, free_port, http, run_program, Bin, Listeners, Service};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Long enough for a cold `npx -y wscat` (one registry download) and a fresh initdb.
const SLOW: Duration = Duration::from_secs(180);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the repository")
        .to_path_buf()
}

/// The printed line that starts with `prefix` (after indentation), and the one after it
/// when the line continues with `\`.
fn printed_command(out: &str, prefix: &str) -> String {
    let mut lines = out.lines().map(str::trim);
    let first = lines
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{out}"));
    match first.strip_suffix('\\') {
        Some(head) => format!("{head} {}", lines.next().unwrap_or_default()),
        None => first.to_owned(),
    }
}

/// `s` as one single-quoted shell word.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[tokio::test(flavor = "multi_thread")]
async fn make_run_prints_a_watch_command_and_a_publish_command_that_work_as_printed() {
    let run_dir = tempfile::tempdir().expect("temp dir");
    // initdb runs as the postgres user, who must reach the data directory.
    std::fs::set_permissions(
        run_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod the run dir");
    let port = free_port();
    let bin_dir = Bin::Gateway.path().expect("built binaries");
    let script = repo_root().join("scripts/run-local.sh");
    let env = [
        ("RUN_DIR", run_dir.path().display().to_string()),
        ("RUN_PORT", port.to_string()),
        ("RUN_ADMIN_PORT", free_port().to_string()),
        ("RUN_PG_PORT", free_port().to_string()),
        (
            "RUN_BIN_DIR",
            bin_dir.parent().expect("bin dir").display().to_string(),
        ),
    ];
    let script_path = script.display().to_string();
    let mut system = Service::spawn_program(
        Path::new("/bin/bash"),
        Listeners::None,
        &[&script_path],
        &env,
    )
    .await
    .expect("starting make run's script");
    system
        .wait_for_log("Health: curl", SLOW)
        .await
        .expect("the ready commands are printed");
    let printed = system.logs();
    let url = format!("ws://127.0.0.1:{port}/ws/demo?token=");
    let wscat = printed_command(&printed, "npx -y wscat -c ");
    let websocat = printed_command(&printed, "websocat ");
    assert!(wscat.contains(&url), "{wscat}");
    assert!(websocat.contains(&url), "{websocat}");
    let publish = printed_command(&printed, "curl -sS -X POST ");

    // The gateway is up once /health answers (it is printed before the process starts).
    let health = format!("http://127.0.0.1:{port}/health");
    // Polled: the gateway is a grandchild whose start is not reported.
    eventually("the gateway came up (/health 2xx)", SLOW, || async {
        match http().get(&health).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("status {}", r.status())),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;

    // The printed watch command, run as printed in a terminal (`script` gives it one: wscat
    // prints nothing without one), whose input stays open for a bounded time.
    let interactive = format!("sleep 120 | script -qfec {} /dev/null", shell_quote(&wscat));
    let watcher = Service::spawn_program(
        Path::new("/bin/bash"),
        Listeners::None,
        &["-c", &interactive],
        &[],
    )
    .await
    .expect("running the wscat line");
    watcher
        .wait_for_log("Connected", SLOW)
        .await
        .expect("wscat connects with the printed URL");
    let out = run_program(Path::new("/bin/bash"), &["-c", &publish], &[])
        .await
        .expect("running the curl line");
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(reply.contains(r#""published":1"#), "{reply}");
    watcher
        .wait_for_log(r#""text":"hello""#, SLOW)
        .await
        .expect("the sample event reaches the printed watch command");

    system.sigterm();
    system
        .wait_exit(Duration::from_secs(60))
        .await
        .expect("make run stops on SIGTERM");
}
