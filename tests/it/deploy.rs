//! The deployment files are real files that real tools accept: promtool for
//! the Prometheus config, rules and rule tests; nginx -t; the compose file,
//! the Kubernetes manifests and the dashboard checked against the code; and
//! scripts/cluster run end to end.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::pg::TestDb;
use crate::common::redis::{base_url as redis_url, TestPrefix};
use crate::common::*;
use serde_yaml::Value as Yaml;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &str) -> Yaml {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs a tool and fails the test with its output when it disagrees.
fn tool(program: &str, args: &[&str], dir: &Path) {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program} is installed (scripts/test installs it): {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every environment variable `collabd serve` reads.
fn known_variables() -> BTreeSet<String> {
    let output = crate::common::collabd_command()
        .args(["serve", "--help"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .split("[env: ")
        .skip(1)
        .map(|rest| rest.split(['=', ']']).next().unwrap().to_owned())
        .collect()
}

/// Metric names in docs/METRICS.md.
fn documented_metrics() -> BTreeSet<String> {
    std::fs::read_to_string(root().join("docs/METRICS.md"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn promtool_accepts_the_config_the_rules_and_their_tests() {
    let dir = root().join("deploy/prometheus");
    tool("promtool", &["check", "config", "prometheus.yml"], &dir);
    tool("promtool", &["check", "rules", "rules.yml"], &dir);
    tool("promtool", &["test", "rules", "rules.test.yml"], &dir);
}

#[test]
fn every_alert_has_a_unit_test_and_a_runbook() {
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/rules.yml")).unwrap();
    let tests = std::fs::read_to_string(root().join("deploy/prometheus/rules.test.yml")).unwrap();
    let operations = std::fs::read_to_string(root().join("docs/OPERATIONS.md")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    for alert in alerts {
        let named = format!("alertname: {alert}");
        let fires = tests.split(&named).skip(1).any(|rest| {
            let block = rest.split("alertname:").next().unwrap();
            block.contains("exp_labels")
        });
        let silent = tests
            .split(&named)
            .skip(1)
            .any(|rest| rest.trim_start().starts_with("exp_alerts: []"));
        assert!(fires, "{alert} has no test where it fires");
        assert!(silent, "{alert} has no test where it stays silent");
        assert!(
            operations.contains(&format!("### {alert}")),
            "{alert} has no runbook in docs/OPERATIONS.md"
        );
    }
}

#[test]
fn nginx_accepts_the_load_balancer_config() {
    let conf = root().join("deploy/nginx/nginx.conf");
    tool(
        "nginx",
        &[
            "-t",
            "-q",
            "-e",
            "/dev/stderr",
            "-c",
            conf.to_str().unwrap(),
        ],
        &root(),
    );
}

#[test]
fn the_compose_file_runs_three_replicas_behind_nginx_with_healthy_dependencies() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_mapping().unwrap();
    let names: BTreeSet<&str> = services.keys().filter_map(|k| k.as_str()).collect();
    for needed in [
        "collabd",
        "nginx",
        "postgres",
        "redis",
        "prometheus",
        "lgtm",
    ] {
        assert!(names.contains(needed), "no {needed} service");
    }
    for (name, service) in services {
        assert!(
            service["healthcheck"]["test"].is_sequence(),
            "{name:?} has no health check"
        );
        if let Some(volumes) = service["volumes"].as_sequence() {
            for volume in volumes.iter().filter_map(|v| v.as_str()) {
                let source = volume.split(':').next().unwrap();
                assert!(
                    root().join(source).exists(),
                    "{name:?} mounts missing {source}"
                );
            }
        }
    }
    let collabd = &compose["services"]["collabd"];
    assert_eq!(collabd["deploy"]["replicas"].as_u64(), Some(3));
    for dependency in ["postgres", "redis"] {
        assert_eq!(
            collabd["depends_on"][dependency]["condition"].as_str(),
            Some("service_healthy"),
            "collabd must wait for a healthy {dependency}"
        );
    }
    assert!(
        collabd["ports"].is_null(),
        "replicas are reached through nginx only"
    );
    // Only nginx is believed about the client's address: its fixed
    // address, inside the network's subnet, and nothing wider.
    let nginx_ip = compose["services"]["nginx"]["networks"]["default"]["ipv4_address"]
        .as_str()
        .expect("nginx has a fixed address");
    assert_eq!(
        collabd["environment"]["TRUSTED_PROXIES"].as_str(),
        Some(nginx_ip)
    );
    let subnet = compose["networks"]["default"]["ipam"]["config"][0]["subnet"]
        .as_str()
        .unwrap();
    let prefix = subnet.rsplit_once(".0/24").expect("a /24 subnet").0;
    assert!(
        nginx_ip.starts_with(&format!("{prefix}.")),
        "{nginx_ip} outside {subnet}"
    );
    let known = known_variables();
    for key in collabd["environment"].as_mapping().unwrap().keys() {
        let key = key.as_str().unwrap();
        assert!(known.contains(key), "collabd has no setting {key}");
    }
    // Prometheus finds every replica by DNS on the management port.
    let prometheus = yaml("deploy/prometheus/prometheus.yml");
    let job = &prometheus["scrape_configs"][0];
    assert_eq!(job["job_name"].as_str(), Some("collabd"));
    let sd = &job["dns_sd_configs"][0];
    assert_eq!(sd["names"][0].as_str(), Some("collabd"));
    let metrics_port = collabd["environment"]["METRICS_ADDR"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert_eq!(sd["port"].as_u64(), Some(metrics_port));
    // The Dockerfile builds in one stage and runs unprivileged in another.
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert_eq!(
        dockerfile.matches("\nFROM ").count() + usize::from(dockerfile.starts_with("FROM ")),
        2
    );
    assert!(dockerfile.contains("\nUSER 10001"));
    assert!(dockerfile.contains("\nHEALTHCHECK "));
}

/// The Redis Cluster override: six cluster-enabled nodes at fixed addresses
/// in the compose network, joined three masters to three replicas by the
/// `redis` service collabd already waits for, and collabd's REDIS_URL
/// naming those nodes in the cluster form.
#[test]
fn the_redis_cluster_override_joins_six_nodes_and_points_collabd_at_them() {
    let mut compose = yaml("docker-compose.redis-cluster.yml");
    compose.apply_merge().unwrap();
    let subnet = yaml("docker-compose.yml")["networks"]["default"]["ipam"]["config"][0]["subnet"]
        .as_str()
        .unwrap()
        .to_owned();
    let prefix = subnet.rsplit_once(".0/24").unwrap().0.to_owned();
    let mut addresses = Vec::new();
    for i in 1..=6 {
        let node = &compose["services"][format!("redis-{i}").as_str()];
        let command: Vec<&str> = node["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|c| c.as_str())
            .collect();
        assert!(
            command
                .windows(2)
                .any(|w| w == ["--cluster-enabled", "yes"]),
            "redis-{i}: {command:?}"
        );
        assert!(node["healthcheck"]["test"].is_sequence(), "redis-{i}");
        let ip = node["networks"]["default"]["ipv4_address"]
            .as_str()
            .unwrap();
        assert!(
            ip.starts_with(&format!("{prefix}.")),
            "{ip} outside {subnet}"
        );
        addresses.push(format!("{ip}:6379"));
    }
    let init = &compose["services"]["redis"];
    let script = init["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        script.contains(&format!("--cluster create {}", addresses.join(" ")))
            && script.contains("--cluster-replicas 1"),
        "{script}"
    );
    assert!(init["healthcheck"]["test"].is_sequence());
    let url = compose["services"]["collabd"]["environment"]["REDIS_URL"]
        .as_str()
        .unwrap();
    let named: Vec<&str> = url
        .trim_start_matches("redis-cluster://")
        .split(['?', '&'])
        .map(|part| part.trim_start_matches("node="))
        .collect();
    assert!(url.starts_with("redis-cluster://"), "{url}");
    assert!(
        named.len() >= 2 && named.iter().all(|n| addresses.contains(&n.to_string())),
        "{url} names nodes outside the cluster"
    );
}

#[test]
fn the_kubernetes_manifests_fit_together() {
    let dir = root().join("deploy/k8s");
    let mut kinds = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let doc = yaml(path.strip_prefix(root()).unwrap().to_str().unwrap());
        let kind = doc["kind"].as_str().unwrap().to_owned();
        let api = doc["apiVersion"].as_str().unwrap();
        let expected = match kind.as_str() {
            "Deployment" => "apps/v1",
            "Service" | "ConfigMap" | "Secret" => "v1",
            "PodMonitor" => "monitoring.coreos.com/v1",
            "HorizontalPodAutoscaler" => "autoscaling/v2",
            "PodDisruptionBudget" => "policy/v1",
            other => panic!("unexpected kind {other} in {path:?}"),
        };
        assert_eq!(api, expected, "{kind}");
        assert!(doc["metadata"]["name"].is_string(), "{kind} has no name");
        kinds.insert(kind);
    }
    assert_eq!(kinds.len(), 7, "{kinds:?}");

    let deployment = yaml("deploy/k8s/deployment.yaml");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(deployment["spec"]["selector"]["matchLabels"], *labels);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let ports: BTreeSet<&str> = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(ports.contains("http") && ports.contains("metrics"));
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        assert_eq!(
            container[probe]["httpGet"]["path"].as_str(),
            Some(path),
            "{probe}"
        );
        assert_eq!(
            container[probe]["httpGet"]["port"].as_str(),
            Some("metrics"),
            "{probe}"
        );
    }
    assert!(container["lifecycle"]["preStop"].is_mapping(), "no preStop");
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"].as_bool(),
        Some(false)
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let env_names: Vec<&str> = container["envFrom"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|e| {
            e["configMapRef"]["name"]
                .as_str()
                .or(e["secretRef"]["name"].as_str())
        })
        .collect();
    assert_eq!(env_names, ["collabd-config", "collabd-secrets"]);

    // The grace period outlasts preStop, the drain delay and the shutdown timeout.
    let config = yaml("deploy/k8s/configmap.yaml");
    let known = known_variables();
    for key in config["data"].as_mapping().unwrap().keys() {
        assert!(known.contains(key.as_str().unwrap()), "no setting {key:?}");
    }
    let secret = yaml("deploy/k8s/secret.yaml");
    for key in secret["stringData"].as_mapping().unwrap().keys() {
        assert!(known.contains(key.as_str().unwrap()), "no setting {key:?}");
    }
    let seconds = |key: &str| {
        config["data"][key]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let pre_stop = container["lifecycle"]["preStop"]["exec"]["command"][2]
        .as_str()
        .unwrap()
        .trim_start_matches("sleep ")
        .parse::<u64>()
        .unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace
            > pre_stop
                + seconds("SHUTDOWN_DRAIN_DELAY_SECONDS")
                + seconds("SHUTDOWN_TIMEOUT_SECONDS"),
        "grace period {grace}s is too short"
    );
    assert_eq!(
        config["data"]["METRICS_ADDR"].as_str(),
        Some("0.0.0.0:9090")
    );

    let selector = labels.clone();
    assert_eq!(
        yaml("deploy/k8s/service.yaml")["spec"]["selector"],
        selector
    );
    assert_eq!(
        yaml("deploy/k8s/pdb.yaml")["spec"]["selector"]["matchLabels"],
        selector
    );
    let monitor = yaml("deploy/k8s/podmonitor.yaml");
    assert_eq!(monitor["spec"]["selector"]["matchLabels"], selector);
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"].as_str(), Some("metrics"));
    // Prometheus sends the bearer token the pods read, from the same secret.
    let secret = yaml("deploy/k8s/secret.yaml");
    let credentials = &endpoint["authorization"]["credentials"];
    assert_eq!(endpoint["authorization"]["type"].as_str(), Some("Bearer"));
    assert_eq!(credentials["name"], secret["metadata"]["name"]);
    assert_eq!(credentials["key"].as_str(), Some("METRICS_AUTH_TOKEN"));
    assert!(secret["stringData"]["METRICS_AUTH_TOKEN"].is_string());
    let loaded = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|source| source["secretRef"]["name"] == secret["metadata"]["name"]);
    assert!(
        loaded,
        "the pods do not load {:?}",
        secret["metadata"]["name"]
    );
    let hpa = yaml("deploy/k8s/hpa.yaml");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2);
}

/// Metric names a PromQL expression reads: identifiers that are neither
/// functions, keywords nor label names, outside matchers, ranges and strings.
fn metric_names(expr: &str) -> Vec<String> {
    let mut cleaned = String::new();
    let mut depth = 0;
    let mut quoted = false;
    for c in expr.chars() {
        match c {
            '"' => quoted = !quoted,
            '{' | '[' if !quoted => depth += 1,
            '}' | ']' if !quoted => depth -= 1,
            _ if quoted || depth > 0 => {}
            _ => cleaned.push(c),
        }
    }
    // Grouping label lists.
    let mut text = cleaned.clone();
    for keyword in ["by (", "without ("] {
        while let Some(start) = text.find(keyword) {
            let end = text[start..].find(')').map(|e| start + e + 1).unwrap();
            text.replace_range(start..end, " ");
        }
    }
    let chars: Vec<char> = text.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_alphabetic() || chars[i] == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if next != Some(&'(') && !["and", "or", "unless"].contains(&word.as_str()) {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_dashboard_queries_only_documented_metrics() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/dashboards/collabd.json")).unwrap(),
    )
    .unwrap();
    let documented = documented_metrics();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for name in metric_names(expr) {
                let base = name
                    .trim_end_matches("_bucket")
                    .trim_end_matches("_sum")
                    .trim_end_matches("_count");
                let known = documented.contains(&name) || documented.contains(base) || name == "up";
                assert!(
                    known,
                    "panel {:?} queries {name}, which docs/METRICS.md does not list",
                    panel["title"]
                );
                queried += 1;
            }
        }
    }
    assert!(
        queried > 20,
        "the dashboard queries almost nothing ({queried})"
    );
    // The same holds for the alert rules.
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/rules.yml")).unwrap();
    for line in rules.lines().filter(|l| {
        l.contains("expr:")
            || l.trim_start().starts_with("sum(")
            || l.contains("histogram_quantile")
    }) {
        let expr = line
            .trim()
            .trim_start_matches("expr:")
            .trim_start_matches('|');
        for name in metric_names(expr) {
            let base = name.trim_end_matches("_bucket");
            assert!(
                documented.contains(&name)
                    || documented.contains(base)
                    || name == "up"
                    || name.starts_with("collabd:"),
                "rules.yml reads {name}, which docs/METRICS.md does not list"
            );
        }
    }
}

/// Stops the cluster even when the test fails half-way.
struct Running {
    dir: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/cluster"))
            .arg("stop")
            .env("CLUSTER_DIR", &self.dir)
            .output();
        // A failed test shows the end of each log, and then the folder goes
        // too (it holds the JWT secret): nothing is left behind either way.
        if std::thread::panicking() {
            for log in [
                "replica-1",
                "replica-2",
                "replica-3",
                "nginx-error",
                "prometheus",
            ] {
                let text = std::fs::read_to_string(self.dir.join(format!("{log}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(10).collect();
                eprintln!("--- {log}.log (last lines)");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port_block(size: u16) -> u16 {
    // A block of consecutive free ports, probed by binding each.
    'search: for _ in 0..50 {
        let base = 20_000 + fastrand::u16(0..20_000);
        for port in base..base + size {
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                continue 'search;
            }
        }
        return base;
    }
    panic!("no free block of {size} ports");
}

/// Where one `scripts/cluster` test runs: its own directory, block of ten
/// ports (replicas at +0..+2, their metrics at +3..+5, nginx at +6,
/// Prometheus at +7), schema and Redis prefix.
struct ClusterScript {
    dir: PathBuf,
    base: u16,
    db: std::sync::Arc<TestDb>,
    prefix: TestPrefix,
}

const SCRIPT_SECRET: &str = "cluster-script-test-secret-of-32-bytes!";

impl ClusterScript {
    async fn new() -> ClusterScript {
        ClusterScript {
            dir: std::env::temp_dir().join(format!(
                "collabd-cluster-test-{}",
                uuid::Uuid::new_v4().simple()
            )),
            base: free_port_block(10),
            db: TestDb::create().await,
            prefix: TestPrefix::new(),
        }
    }

    fn port(&self, offset: u16) -> u16 {
        self.base + offset
    }

    /// `scripts/cluster start` with only these settings in its environment.
    async fn start(&self) -> std::process::Output {
        self.start_with(&[], &[]).await
    }

    async fn start_with(&self, args: &[&str], envs: &[(&str, String)]) -> std::process::Output {
        tokio::process::Command::new(root().join("scripts/cluster"))
            .arg("start")
            .args(args)
            .env_clear()
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CLUSTER_DIR", &self.dir)
            .env("API_BASE_PORT", self.port(0).to_string())
            .env("METRICS_BASE_PORT", self.port(3).to_string())
            .env("LB_PORT", self.port(6).to_string())
            .env("PROMETHEUS_PORT", self.port(7).to_string())
            .env("DATABASE_URL", self.db.url())
            .env("REDIS_URL", redis_url())
            .env("REDIS_KEY_PREFIX", &self.prefix.prefix)
            .env("AUTH_JWT_SECRET", SCRIPT_SECRET)
            .env("COLLABD_BIN", env!("CARGO_BIN_EXE_collabd"))
            .output()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn scripts_cluster_serves_clients_through_nginx_and_prometheus_sees_every_replica() {
    let setup = ClusterScript::new().await;
    let output = setup.start().await;
    let dir = setup.dir.clone();
    let ports = |offset: u16| setup.port(offset).to_string();
    let secret = SCRIPT_SECRET;
    let _running = Running { dir: dir.clone() };
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "scripts/cluster start failed:\n{printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lb: std::net::SocketAddr = format!("127.0.0.1:{}", ports(6)).parse().unwrap();
    assert!(printed.contains(&format!("http://{lb}")), "{printed}");

    // Clients of the load balancer see each other's events.
    let api = Api::new(lb, secret);
    let id = api.create_draft("alice", "Through nginx").await;
    assert_eq!(api.add("alice", &id, "bob", "editor").await.status, 201);
    let (mut bob, _) = api.ws("bob", &id, None).await;
    for n in 0..9 {
        assert_eq!(api.append("alice", &id, &format!("{n}")).await.status, 201);
    }
    assert_eq!(bob.next_seqs(9).await, (2..=10).collect::<Vec<_>>());

    // Prometheus scrapes every replica.
    let query = format!(
        "http://127.0.0.1:{}/api/v1/query?query=up%7Bjob%3D%22collabd%22%7D",
        ports(7)
    );
    eventually(|| async {
        let Ok(response) = api.http.get(&query).send().await else {
            return false;
        };
        let Ok(body) = response.json::<serde_json::Value>().await else {
            return false;
        };
        let results = body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        results.len() == 3 && results.iter().all(|r| r["value"][1] == "1")
    })
    .await;

    // Stopping drains the replicas before nginx goes: Bob is told why.
    let stop = tokio::process::Command::new(root().join("scripts/cluster"))
        .arg("stop")
        .env("CLUSTER_DIR", &dir)
        .output();
    let (stop, ()) = tokio::join!(stop, bob.expect_closed("shutdown", 1001));
    assert!(stop.unwrap().status.success());
    eventually(|| async { tokio::net::TcpStream::connect(lb).await.is_err() }).await;
}

/// `--redis-cluster`: the same cluster on a Redis Cluster the script starts
/// (three masters, three replicas) and stops again.
#[tokio::test]
async fn scripts_cluster_runs_on_a_redis_cluster_of_its_own() {
    let setup = ClusterScript::new().await;
    let redis_port = crate::common::redis::free_port_run();
    let output = setup
        .start_with(
            &["--redis-cluster"],
            &[("REDIS_CLUSTER_PORT", redis_port.to_string())],
        )
        .await;
    let _running = Running {
        dir: setup.dir.clone(),
    };
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "scripts/cluster start --redis-cluster failed:\n{printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        printed.contains(&format!("redis-cluster://127.0.0.1:{redis_port}")),
        "{printed}"
    );
    let lb: std::net::SocketAddr = format!("127.0.0.1:{}", setup.port(6)).parse().unwrap();
    let api = Api::new(lb, SCRIPT_SECRET);
    let id = api.create_draft("alice", "Sharded").await;
    let (mut watcher, _) = api.ws("alice", &id, None).await;
    for n in 0..5 {
        assert_eq!(api.append("alice", &id, &format!("{n}")).await.status, 201);
    }
    assert_eq!(watcher.next_seqs(5).await, [1, 2, 3, 4, 5]);
    drop(watcher);

    let stop = tokio::process::Command::new(root().join("scripts/cluster"))
        .arg("stop")
        .env("CLUSTER_DIR", &setup.dir)
        .output()
        .await
        .unwrap();
    assert!(stop.status.success());
    for port in redis_port..redis_port + 6 {
        eventually(|| async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
        })
        .await;
    }
}

#[tokio::test]
async fn scripts_cluster_start_fails_when_a_replica_cannot_start() {
    let setup = ClusterScript::new().await;
    let (dir, base) = (setup.dir.clone(), setup.base);
    // Replica 2's port is taken: it exits at once, the others start.
    let _taken = std::net::TcpListener::bind(("127.0.0.1", setup.port(1))).unwrap();
    let output = setup.start().await;
    let _running = Running { dir: dir.clone() };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "start succeeded: {stderr}");
    assert!(
        stderr.contains("replica 2 exited before listening")
            && stderr.contains(&(base + 1).to_string()),
        "{stderr}"
    );
    // Nothing is left running: the replicas that did start were stopped.
    for i in [1, 3] {
        let pidfile = dir.join(format!("replica-{i}.pid"));
        assert!(!pidfile.exists(), "replica {i} still has a pid file");
    }
    for port in [base, base + 2, base + 6] {
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err(),
            "port {port} still open"
        );
    }
}
