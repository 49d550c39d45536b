//! Child processes that cannot outlive the test process.
//!
//! A `static` control plane is never dropped and a test may abort, so `Drop` alone would leave etcd and
//! kube-apiserver running. Each control plane therefore starts a tiny `sh` watchdog first and tells it, over a
//! pipe, the pid of every process it starts. Only the test process holds the pipe's write end (Rust opens it
//! close-on-exec, so no other child inherits it), and the kernel closes it however the test process ends. The
//! watchdog reads until end of file, then stops the processes it was told about (TERM, then KILL after ten
//! seconds) and removes the control plane's directory.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

use super::ControlPlaneError;

const WATCHDOG_SCRIPT: &str = r#"
trap '' INT TERM HUP
pids=
while read -r pid; do pids="$pids $pid"; done
alive=$pids
tries=0
while [ -n "$alive" ]; do
  if [ "$tries" -eq 0 ]; then kill -TERM $alive 2>/dev/null; fi
  if [ "$tries" -ge 100 ]; then kill -KILL $alive 2>/dev/null; break; fi
  sleep 0.1
  tries=$((tries + 1))
  still=
  for pid in $alive; do if kill -0 "$pid" 2>/dev/null; then still="$still $pid"; fi; done
  alive=$still
done
if [ "$2" = remove ]; then rm -rf -- "$1"; fi
"#;

/// Proxy settings would send the API server's calls to loopback webhooks elsewhere.
const PROXY_VARIABLES: [&str; 6] = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
];

/// Stops the listed processes and removes a directory once the test process is gone.
pub(crate) struct Watchdog {
    child: Child,
    pids: ChildStdin,
}

impl Watchdog {
    /// Starts a watchdog that will remove `dir` (unless `keep_dir`) when the test process ends.
    pub fn spawn(dir: &Path, keep_dir: bool) -> Result<Self, ControlPlaneError> {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("mcp-authz-control-plane-watchdog")
            .arg(dir)
            .arg(if keep_dir { "keep" } else { "remove" })
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(ControlPlaneError::io("cannot start the watchdog (/bin/sh)"))?;
        let pids = child.stdin.take().ok_or_else(|| ControlPlaneError::Io {
            what: "the watchdog has no stdin".into(),
            source: std::io::Error::other("missing pipe"),
        })?;
        Ok(Self { child, pids })
    }

    /// From now on, `pid` dies with the test process.
    pub fn watch(&mut self, pid: u32) -> Result<(), ControlPlaneError> {
        writeln!(self.pids, "{pid}")
            .and_then(|()| self.pids.flush())
            .map_err(ControlPlaneError::io("cannot tell the watchdog a pid"))
    }

    /// For an orderly shutdown by the owner, who stops the processes itself: the watchdog is killed before
    /// it could signal a pid that has been reaped and reused.
    pub fn disarm(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Closes the pipe as the test process's death would; returns the watchdog process.
    #[cfg(test)]
    pub fn close_pipe(self) -> Child {
        let Self { child, pids } = self;
        drop(pids);
        child
    }
}

/// One control plane process, its output going to a log file.
pub(crate) struct Supervised {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Supervised {
    /// Starts `program` with `args`, logging to `log`, watched by `watchdog`.
    pub fn spawn(
        name: &'static str,
        program: &Path,
        args: Vec<OsString>,
        log: PathBuf,
        watchdog: &mut Watchdog,
    ) -> Result<Self, ControlPlaneError> {
        let out = File::create(&log).map_err(ControlPlaneError::io(format!(
            "cannot create {}",
            log.display()
        )))?;
        let err = out
            .try_clone()
            .map_err(ControlPlaneError::io("cannot duplicate a log file handle"))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for variable in PROXY_VARIABLES {
            command.env_remove(variable);
        }
        let mut child = command.spawn().map_err(ControlPlaneError::io(format!(
            "cannot start {}",
            program.display()
        )))?;
        if let Err(error) = watchdog.watch(child.id()) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(error);
        }
        Ok(Self { name, child, log })
    }

    /// The operating system's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where its stdout and stderr go.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// An error if the process has exited.
    pub fn check_running(&mut self) -> Result<(), ControlPlaneError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(ControlPlaneError::ProcessExited {
                name: self.name,
                status: status.to_string(),
                log: self.log.clone(),
                log_tail: log_tail(&self.log),
            }),
            Err(source) => Err(ControlPlaneError::Io {
                what: format!("cannot check on {}", self.name),
                source,
            }),
        }
    }

    /// Kills and reaps the process. A throwaway control plane needs no graceful shutdown.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last lines of a log file, for error messages (reads at most the last 8 KiB).
pub(crate) fn log_tail(path: &Path) -> String {
    const TAIL_BYTES: u64 = 8 * 1024;
    let Ok(mut file) = File::open(path) else {
        return format!("(cannot read {})", path.display());
    };
    let len = file.metadata().map(|meta| meta.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)));
    let mut bytes = Vec::new();
    let _ = file.take(TAIL_BYTES).read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn process_exists(pid: u32) -> bool {
        // A killed child of ours stays a zombie until reaped; /proc/PID/stat shows state Z then.
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
    }

    #[test]
    fn closing_the_pipe_stops_the_watched_processes_and_removes_the_directory() {
        let dir = tempfile::tempdir().unwrap().keep();
        std::fs::write(dir.join("data"), "x").unwrap();
        let mut watchdog = Watchdog::spawn(&dir, false).unwrap();
        let mut sleeper = Supervised::spawn(
            "sleep",
            Path::new("/bin/sleep"),
            vec!["600".into()],
            dir.join("sleep.log"),
            &mut watchdog,
        )
        .unwrap();
        let pid = sleeper.pid();
        assert!(process_exists(pid));

        let started = Instant::now();
        let mut watchdog = watchdog.close_pipe();
        // Reap the sleeper as init would reap an orphan; a zombie still counts as alive for `kill -0`.
        let error = loop {
            match sleeper.check_running() {
                Ok(()) if started.elapsed() < Duration::from_secs(20) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(()) => panic!("the watched process is still running"),
                Err(error) => break error,
            }
        };
        assert!(watchdog.wait().unwrap().success());
        assert!(!process_exists(pid), "the watched process is still running");
        assert!(!dir.exists(), "the directory was not removed");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "TERM should have been enough"
        );
        assert_eq!(error.metric_label(), "process_exited");
        assert!(
            error.to_string().starts_with("sleep exited (signal: 15"),
            "{error}"
        );
    }

    #[test]
    fn a_disarmed_watchdog_leaves_everything_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut watchdog = Watchdog::spawn(dir.path(), false).unwrap();
        let mut sleeper = Supervised::spawn(
            "sleep",
            Path::new("/bin/sleep"),
            vec!["600".into()],
            dir.path().join("sleep.log"),
            &mut watchdog,
        )
        .unwrap();
        watchdog.disarm();
        std::thread::sleep(Duration::from_millis(300));
        assert!(sleeper.check_running().is_ok());
        assert!(dir.path().exists());
        sleeper.stop();
        assert!(sleeper.check_running().is_err());
    }

    #[test]
    fn log_tail_keeps_the_last_twenty_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let text: String = (1..=50).map(|n| format!("line {n}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let tail = log_tail(&path);
        assert_eq!(tail.lines().count(), 20);
        assert!(tail.starts_with("line 31\n") && tail.ends_with("line 50"));
        assert_eq!(
            log_tail(&dir.path().join("missing")),
            format!("(cannot read {})", dir.path().join("missing").display())
        );
    }
}
