//! The built binary, as an operator runs it: `collabd token`, start-up
//! refusals with one clear line, JSON logs in prod that carry request ids and
//! never a token or the secret, and a clean exit on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{closed_addr, refused_start};

const SECRET: &str = "a-production-secret-of-at-least-32-bytes!";
const DEADLINE: Duration = Duration::from_secs(15);

/// A `collabd` command with none of the caller's environment.
fn collabd() -> Command {
    crate::common::collabd_command()
}

#[test]
fn prod_without_a_real_secret_refuses_to_start_with_one_line() {
    let (stderr, _) = refused_start(collabd().env("APP_ENV", "prod"));
    assert!(stderr.contains("AUTH_JWT_SECRET"), "{stderr}");
}

#[test]
fn invalid_values_name_their_variable_in_one_line() {
    for (var, value) in [
        ("PORT", "not-a-port"),
        ("RATE_LIMIT_ENABLED", "perhaps"),
        ("AUDIT_SAMPLE_RATE", "2.5"),
        ("APP_ENV", "staging"),
        ("AUTH_JWKS_MIN_REFRESH_SECONDS", "0"),
    ] {
        let (stderr, _) = refused_start(collabd().env(var, value));
        assert!(stderr.contains(var), "{var}: {stderr}");
    }
}

#[test]
fn the_help_lists_the_knobs_with_their_variables() {
    let output = collabd().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for var in [
        "RATE_LIMIT_ENABLED",
        "RATE_LIMIT_PER_MINUTE_DEFAULT",
        "WS_MAX_SOCKETS_PER_USER",
        "MAX_COLLABORATORS_PER_DRAFT",
        "AUDIT_SAMPLE_RATE",
        "TRUSTED_PROXIES",
    ] {
        assert!(help.contains(var), "{var} missing from --help");
    }
    assert!(
        !help.contains("collabd-dev-secret"),
        "the dev secret is shown"
    );
}

struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Server {
    fn start(envs: &[(&str, &str)]) -> Server {
        let mut cmd = collabd();
        cmd.envs(envs.iter().copied())
            .env("PORT", "0")
            .env("METRICS_ADDR", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Server {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line matching `pred` and returns it.
    fn wait_for(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + DEADLINE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no matching log line; saw {:#?}", self.seen));
            self.seen.push(line.clone());
            if pred(&line) {
                return line;
            }
        }
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                return status;
            }
            assert!(Instant::now() < until, "server did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

#[tokio::test]
async fn prod_logs_are_json_with_request_ids_and_no_secrets() {
    let mut server = Server::start(&[("APP_ENV", "prod"), ("AUTH_JWT_SECRET", SECRET)]);
    let listening = server.wait_for(|l| l.contains("collabd listening"));
    let line: Value = serde_json::from_str(&listening).expect("start-up line is JSON");
    assert_eq!(line["mode"], "standalone");
    let addr = line["addr"].as_str().unwrap().to_owned();

    let token = String::from_utf8(
        collabd()
            .args(["token", "--user", "alice", "--ttl", "10m"])
            .env("AUTH_JWT_SECRET", SECRET)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let http = reqwest::Client::new();
    let created = http
        .post(format!("http://{addr}/v1/collab/drafts"))
        .bearer_auth(&token)
        .header("x-request-id", "log-check-1")
        .json(&serde_json::json!({ "title": "Logged" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let bad = http
        .get(format!("http://{addr}/v1/collab/drafts"))
        .header("authorization", "Bearer forged.token.value")
        .header("x-request-id", "log-check-2")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);

    let done = server.wait_for(|l| l.contains("log-check-1") && l.contains("request completed"));
    let done: Value = serde_json::from_str(&done).unwrap();
    assert_eq!(done["status"], 201);
    assert_eq!(done["span"]["request_id"], "log-check-1");
    assert_eq!(done["span"]["user_id"], "alice");
    let failed = server.wait_for(|l| l.contains("log-check-2") && l.contains("request completed"));
    let failed: Value = serde_json::from_str(&failed).unwrap();
    assert_eq!(failed["error_code"], "unauthorized");

    let status = server.terminate();
    assert!(status.success(), "exit status {status}");
    for line in &server.seen {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not JSON: {line}"
        );
        assert!(!line.contains(&token), "a token was logged: {line}");
        assert!(
            !line.contains("forged.token.value"),
            "a token was logged: {line}"
        );
        assert!(!line.contains(SECRET), "the secret was logged: {line}");
    }
}

#[test]
fn env_example_lists_exactly_the_variables_of_serve() {
    let output = collabd().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    let mut from_help: Vec<&str> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| rest.split(['=', ']']).next().unwrap())
        .collect();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example")).unwrap();
    let mut from_example: Vec<&str> = example
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| l.split('=').next().unwrap())
        .collect();
    from_help.sort_unstable();
    from_example.sort_unstable();
    assert_eq!(from_example, from_help);
}

/// Every variable README.md and docs/ name is one `serve` reads, or one of
/// the few read elsewhere: a renamed or removed knob fails here, not in a pod.
#[test]
fn the_variables_the_docs_name_exist() {
    let output = collabd().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    let known: Vec<&str> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| rest.split(['=', ']']).next().unwrap())
        .collect();
    // Read by build.rs, by the OpenTelemetry SDK's batch exporter, by the
    // history checker (tests/it/chaos); a constant the runbook names; the
    // placeholder in migration file names.
    let elsewhere = |name: &str| {
        ["COLLABD_REVISION", "UPKEEP_INTERVAL", "CHAOS_SEED", "NNNN"].contains(&name)
            || name.starts_with("OTEL_BSP")
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut docs: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.push(root.join("README.md"));
    assert!(docs.len() > 5, "{docs:?}");
    for path in &docs {
        let doc = path.display();
        let text = std::fs::read_to_string(path).unwrap();
        let named = text
            .split(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .filter(|word| {
                word.contains('_') && word.starts_with(|c: char| c.is_ascii_uppercase())
            });
        for name in named {
            // `RATE_LIMIT_*` names a family.
            let exists = match name.strip_suffix('_') {
                Some(family) => known.iter().any(|k| k.starts_with(name)) || elsewhere(family),
                None => known.contains(&name) || elsewhere(name),
            };
            assert!(
                exists,
                "{doc} names {name}, which `collabd serve` does not read"
            );
        }
    }
}

#[test]
fn the_env_example_as_written_starts_a_server() {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example")).unwrap();
    let vars: Vec<(String, String)> = example
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    // The listeners move to free ports: tests run side by side.
    let vars: Vec<(&str, &str)> = vars
        .iter()
        .filter(|(k, _)| k != "PORT" && k != "METRICS_ADDR")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut server = Server::start(&vars);
    server.wait_for(|l| l.contains("collabd listening"));
    assert!(server.terminate().success());
}

#[tokio::test]
async fn the_console_exporter_prints_spans_with_the_callers_trace() {
    let mut server = Server::start(&[("OTEL_TRACES_EXPORTER", "console"), ("LOG_FORMAT", "json")]);
    let listening = server.wait_for(|l| l.contains("collabd listening"));
    let line: Value = serde_json::from_str(&listening).unwrap();
    let addr = line["addr"].as_str().unwrap().to_owned();
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The span, printed by the exporter, belongs to the caller's trace.
    server.wait_for(|l| l.contains(trace_id) && serde_json::from_str::<Value>(l).is_err());
    assert!(server.terminate().success());
}

#[test]
fn a_taken_port_is_named_in_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (stderr, stdout) = refused_start(collabd().env("PORT", "0").env("METRICS_ADDR", &addr));
    assert!(
        stderr.contains("METRICS_ADDR") && stderr.contains(&addr),
        "{stderr}"
    );
    // Said once: not again as a log line on stdout.
    assert!(!stdout.contains(&addr), "{stdout}");
}

#[test]
fn a_missing_argument_is_named_in_one_line() {
    let (stderr, _) = refused_start(collabd().arg("token"));
    assert!(stderr.contains("--user"), "{stderr}");
}

#[test]
fn log_format_text_is_the_pretty_format() {
    let mut server = Server::start(&[("LOG_FORMAT", "text")]);
    let listening = server.wait_for(|l| l.contains("collabd listening"));
    assert!(
        serde_json::from_str::<Value>(&listening).is_err(),
        "{listening}"
    );
    assert!(server.terminate().success());
}

/// docs/CLUSTER.md: at start-up, an unreachable Redis stops the replica with
/// one line naming the variable and the address (without its password).
#[tokio::test]
async fn an_unreachable_redis_stops_the_start_with_one_line() {
    let db = crate::common::pg::TestDb::create().await;
    let addr = closed_addr();
    let (stderr, _) = refused_start(
        collabd()
            .env("DATABASE_URL", db.url())
            .env("REDIS_URL", format!("redis://:hunter2@{addr}/0"))
            .env("REDIS_KEY_PREFIX", crate::common::redis::unique_prefix())
            .env("PORT", "0")
            .env("METRICS_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json"),
    );
    assert!(
        stderr.contains("REDIS_URL") && stderr.contains(&addr.to_string()),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hunter2"),
        "the password was printed: {stderr}"
    );
}

#[test]
fn an_unreachable_postgres_stops_the_start_with_one_line() {
    let addr = closed_addr();
    let (stderr, _) = refused_start(
        collabd()
            .env(
                "DATABASE_URL",
                format!("postgres://bob:hunter2@{addr}/collabd"),
            )
            .env("PORT", "0")
            .env("METRICS_ADDR", "127.0.0.1:0"),
    );
    assert!(
        stderr.contains("DATABASE_URL")
            && stderr.contains(&addr.to_string())
            && stderr.contains("refused"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hunter2"),
        "the password was printed: {stderr}"
    );
}

/// A collector that does not answer is reported once, naming the endpoint,
/// and serving goes on; the spans of later batches (here, the flush on
/// exit) fail quietly after that.
#[tokio::test]
async fn an_unreachable_collector_is_reported_once() {
    let endpoint = format!("http://{}", closed_addr());
    reported_once(
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
        "traces cannot be exported",
        &endpoint,
    )
    .await;
}

/// The same for the metrics push (every 100 ms here, and once more on exit).
#[tokio::test]
async fn an_unreachable_metrics_collector_is_reported_once() {
    let endpoint = format!("http://{}/v1/metrics", closed_addr());
    reported_once(
        &[
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", endpoint.as_str()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "100"),
        ],
        "metrics cannot be pushed",
        &endpoint,
    )
    .await;
}

/// Serves with `envs`, waits for one WARN line saying `report` and naming
/// `endpoint`, checks serving goes on, and finds no second such line once
/// the process has exited.
async fn reported_once(envs: &[(&str, &str)], report: &str, endpoint: &str) {
    let mut envs = envs.to_vec();
    envs.push(("LOG_FORMAT", "json"));
    let mut server = Server::start(&envs);
    let listening = server.wait_for(|l| l.contains("collabd listening"));
    let line: Value = serde_json::from_str(&listening).unwrap();
    let addr = line["addr"].as_str().unwrap().to_owned();
    let http = reqwest::Client::new();
    let healthz = format!("http://{addr}/healthz");
    assert_eq!(http.get(&healthz).send().await.unwrap().status(), 200);
    let reported: Value = serde_json::from_str(&server.wait_for(|l| l.contains(report))).unwrap();
    assert_eq!(reported["level"], "WARN", "{reported}");
    assert_eq!(reported["endpoint"], endpoint, "{reported}");
    assert_eq!(http.get(&healthz).send().await.unwrap().status(), 200);
    assert!(server.terminate().success());
    let reports = server.seen.iter().filter(|l| l.contains(report)).count();
    assert_eq!(reports, 1, "{:#?}", server.seen);
}
