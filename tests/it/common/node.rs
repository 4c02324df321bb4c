//! A Node.js script of clients/typescript (built by scripts/test) run by a
//! test: commands go to its stdin, and it answers one line each on stdout.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// A browser starting, or a page reaching a state through faults, takes
/// longer than a plain wait on a loaded machine.
const NODE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

pub struct NodeScript {
    lines: mpsc::UnboundedReceiver<String>,
    stdin: ChildStdin,
    _child: Child,
}

impl NodeScript {
    /// Runs `clients/typescript/<script>` with these arguments.
    pub fn start(script: &str, args: &[&str]) -> NodeScript {
        let client = format!("{}/clients/typescript", env!("CARGO_MANIFEST_DIR"));
        assert!(
            std::path::Path::new(&format!("{client}/dist/src/index.js")).exists(),
            "the client is not built: run scripts/test, which builds clients/typescript"
        );
        let mut child = Command::new("node")
            .arg("--experimental-websocket")
            .arg(format!("{client}/{script}"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node is installed (scripts/test installs it)");
        let (tx, lines) = mpsc::unbounded_channel();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                if std::env::var_os("TEST_LOG").is_some() {
                    eprintln!("[node] {line}");
                }
                let _ = tx.send(line);
            }
        });
        NodeScript {
            lines,
            stdin: child.stdin.take().unwrap(),
            _child: child,
        }
    }

    /// The next line the script prints.
    pub async fn next_line(&mut self) -> String {
        tokio::time::timeout(NODE_DEADLINE, self.lines.recv())
            .await
            .expect("timed out waiting for the script")
            .expect("the script exited")
    }

    /// The rest of the next line that starts with `prefix ` (others skipped).
    pub async fn next_with(&mut self, prefix: &str) -> String {
        loop {
            let line = self.next_line().await;
            if let Some(rest) = line.strip_prefix(prefix) {
                if let Some(rest) = rest.strip_prefix(' ') {
                    return rest.to_owned();
                }
                if rest.is_empty() {
                    return String::new();
                }
            }
        }
    }

    pub async fn command(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
    }
}
