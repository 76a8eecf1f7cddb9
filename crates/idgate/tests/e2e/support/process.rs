//! Outside processes (curl, python3, openssl, the `idgate` CLI itself), run to completion or
//! with a deadline.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs a command and returns (exit code, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits up to `timeout` for `child` to exit; `None` if it is still running then. Polls,
/// because a child process has no future to await.
pub fn wait_for_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command with stdin closed and a deadline: (exit code, stdout, stderr). A command
/// still running at the deadline is killed and reported with code -1 and a note in stderr.
/// Blocking: call it from `spawn_blocking` in async tests.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> (i32, String, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let readers = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .map(|stream| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut s) = stream {
                let _ = std::io::Read::read_to_end(&mut s, &mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    });
    let status = wait_for_exit(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let [out, err] = readers.map(|r| r.join().unwrap_or_default());
    match status {
        Some(s) => (s.code().unwrap_or(-1), out, err),
        None => (-1, out, format!("{err}\n(killed after {timeout:?})")),
    }
}

/// Runs the `idgate` CLI with `args`, without the caller's `IDGATE_CONFIG` and `IDGATE_LOG`,
/// for at most 30 s: its exit code, stdout and stderr.
pub fn idgate_cli(args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(super::bin());
    cmd.args(args)
        .env_remove("IDGATE_CONFIG")
        .env_remove("IDGATE_LOG");
    run_bounded(&mut cmd, Duration::from_secs(30))
}

/// [`idgate_cli`] from an async test, off the runtime's thread.
pub async fn idgate_cli_async(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        idgate_cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .expect("the CLI's task")
}
