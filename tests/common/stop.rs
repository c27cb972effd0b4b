//! Stopping the server with a signal, as systemd or `docker stop` does.

use std::process::{Command, ExitStatus};
use std::time::Duration;

use super::Server;

impl Server {
    /// Sends `signal` ("TERM", "INT") to the server process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {} failed", self.child.id());
    }

    /// The exit status, once the process has exited within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        super::wait_exit(&mut self.child, timeout)
    }
}
