//! The `nubo` client against a real server: add, list, describe, remove, JSON output, and errors
//! that say what to do next.

use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{PASSWORD, ServerProcess, fixture_path};

/// Runs the `nubo` client against `server` as its admin.
pub(crate) fn nubo(server: &ServerProcess, args: &[&str]) -> Output {
    let cfg = server.data_dir.join("no-cli-config.toml");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nubo"));
    cmd.args(args)
        .env("NUBO_URL", &server.url)
        .env("NUBO_PASSWORD", PASSWORD)
        .env("NUBO_CONFIG", cfg)
        .env_remove("NUBO_USER")
        .env_remove("NUBO_OUTPUT");
    // A server on HTTPS has its generated certificate; one on plain HTTP has none.
    let ca = server.data_dir.join("tls/cert.pem");
    if ca.exists() {
        cmd.env("NUBO_CA_CERT", ca);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn the_cli_manages_artifacts_and_explains_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start_with(dir.path(), &["--mock-iaas", "-"]);
    let np = fixture_path("network-partition.json");
    let np = np.to_str().unwrap();
    let o = nubo(&s, &["network-partition", "add", "-f", np]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("added successfully"));

    let o = nubo(&s, &["np", "list"]);
    let (out, _) = text(&o);
    assert!(
        out.contains("np-fixture") && out.contains("PROVIDER") && out.contains("mock"),
        "{out}"
    );

    let o = nubo(&s, &["np", "list", "-o", "json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["id"], "np-fixture");

    let o = nubo(&s, &["np", "describe", "np-fixture", "--output", "json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["partitions"][0]["id"], "p-east");

    // A refused artifact: exit 1, the message, the field.
    let bad = fixture_path("network-partition-unknown-provider.json");
    let o = nubo(&s, &["np", "add", "-f", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let (_, err) = text(&o);
    assert!(
        err.contains("provider `openstack` is not available") && err.contains("400"),
        "{err}"
    );

    // Not found: a hint.
    let o = nubo(&s, &["cartridge", "describe", "nope"]);
    let (_, err) = text(&o);
    assert!(
        err.contains("does not exist") && err.contains("hint:"),
        "{err}"
    );

    // Wrong password: what to do.
    let o = Command::new(env!("CARGO_BIN_EXE_nubo"))
        .args([
            "cartridge",
            "list",
            "--password",
            "wrong",
            "--server",
            &s.url,
            "--ca-cert",
        ])
        .arg(s.data_dir.join("tls/cert.pem"))
        .env("NUBO_CONFIG", s.data_dir.join("none.toml"))
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert!(
        err.contains("401") && err.contains("NUBO_PASSWORD"),
        "{err}"
    );

    // Untrusted certificate: what to do.
    let o = Command::new(env!("CARGO_BIN_EXE_nubo"))
        .args(["cartridge", "list", "--server", &s.url])
        .env("NUBO_PASSWORD", PASSWORD)
        .env("NUBO_CONFIG", s.data_dir.join("none.toml"))
        .env("HOME", s.data_dir.join("home"))
        .env_remove("NUBO_CA_CERT")
        .env_remove("XDG_DATA_HOME")
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert!(err.contains("--ca-cert"), "{err}");

    let o = nubo(&s, &["np", "remove", "np-fixture"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = nubo(&s, &["np", "list", "-o", "json"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&o.stdout).unwrap(),
        serde_json::json!([])
    );

    // Kubernetes clusters and their hosts.
    let k8s = fixture_path("kubernetes-cluster.json");
    assert!(
        nubo(
            &s,
            &["kubernetes-cluster", "add", "-f", k8s.to_str().unwrap()]
        )
        .status
        .success()
    );
    let host = s.data_dir.join("host.json");
    std::fs::write(
        &host,
        r#"{"hostId": "extra", "hostname": "extra.local", "privateIPAddress": "10.0.0.9"}"#,
    )
    .unwrap();
    let o = nubo(
        &s,
        &[
            "k8s",
            "add-host",
            "k8s-fixture",
            "-f",
            host.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let o = nubo(&s, &["k8s", "list-hosts", "k8s-fixture"]);
    assert!(
        text(&o).0.contains("extra.local") && text(&o).0.contains("HOSTNAME"),
        "{:?}",
        text(&o)
    );
    assert!(
        nubo(&s, &["k8s", "remove-host", "k8s-fixture", "extra"])
            .status
            .success()
    );
    let o = nubo(&s, &["k8s", "master", "k8s-fixture", "-o", "json"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&o.stdout).unwrap()["hostId"],
        "control"
    );

    // Tenants with Stratos' flags, and their users.
    let o = nubo(
        &s,
        &[
            "tenant",
            "add",
            "-a",
            "boss",
            "-d",
            "acme.com",
            "-e",
            "boss@acme.com",
            "--admin-password",
            "s3cret!",
        ],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let o = nubo(&s, &["tenant", "list", "-d", "acme"]);
    assert!(
        text(&o).0.contains("acme.com") && text(&o).0.contains("boss"),
        "{:?}",
        text(&o)
    );
    let o = Command::new(env!("CARGO_BIN_EXE_nubo"))
        .args([
            "user",
            "list",
            "--server",
            &s.url,
            "-u",
            "boss@acme.com",
            "-p",
            "s3cret!",
            "--ca-cert",
        ])
        .arg(s.data_dir.join("tls/cert.pem"))
        .env("NUBO_CONFIG", s.data_dir.join("none.toml"))
        .output()
        .unwrap();
    assert!(
        text(&o).0.contains("boss") && text(&o).0.contains("admin"),
        "{:?}",
        text(&o)
    );

    // `login` saves the settings; later commands need no flags.
    let cfg = s.data_dir.join("cli.toml");
    let o = Command::new(env!("CARGO_BIN_EXE_nubo"))
        .args([
            "login",
            "--server",
            &s.url,
            "--password",
            PASSWORD,
            "--ca-cert",
        ])
        .arg(s.data_dir.join("tls/cert.pem"))
        .env("NUBO_CONFIG", &cfg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_nubo"))
        .args(["iaas-providers"])
        .env("NUBO_CONFIG", &cfg)
        .env_remove("NUBO_URL")
        .env_remove("NUBO_PASSWORD")
        .output()
        .unwrap();
    assert_eq!(
        text(&o).0,
        "local\ndocker\nkubernetes\nmock\n",
        "{:?}",
        text(&o)
    );
    // The saved settings hold a session's token, not the password.
    let saved = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        saved.contains("token = \"nubo.") && !saved.contains(PASSWORD),
        "{saved}"
    );
    let with_config = |args: &[&str], token: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_nubo"));
        c.args(args)
            .env("NUBO_CONFIG", &cfg)
            .env_remove("NUBO_URL")
            .env_remove("NUBO_PASSWORD")
            .env_remove("NUBO_TOKEN");
        if let Some(t) = token {
            c.env("NUBO_TOKEN", t);
        }
        let o = c.output().unwrap();
        (o.status.success(), text(&o))
    };
    let (ok, (out, err)) = with_config(&["whoami", "-o", "json"], None);
    assert!(ok, "{err}");
    assert!(out.contains("\"session\""), "{out}");
    // An API token for automation, read-only, used through NUBO_TOKEN.
    let (ok, (token, err)) = with_config(
        &["token", "create", "ci", "--scope", "read", "--days", "3"],
        None,
    );
    assert!(ok, "{err}");
    assert!(err.contains("shown once"), "{err}");
    let (ok, (out, _)) = with_config(&["whoami", "-o", "json"], Some(token.trim()));
    assert!(ok && out.contains("\"apiToken\""), "{out}");
    let (ok, (out, _)) = with_config(&["token", "list"], None);
    assert!(ok && out.contains("ci") && out.contains("read"), "{out}");
    // Logged out: the saved token is gone and refused; the API token still works.
    let (ok, (_, err)) = with_config(&["logout"], None);
    assert!(ok, "{err}");
    assert!(!std::fs::read_to_string(&cfg).unwrap().contains("token"));
    let (ok, _) = with_config(&["iaas-providers"], Some(token.trim()));
    assert!(ok);
}

#[test]
fn nothing_listening_says_how_to_start_the_platform() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = Command::new(env!("CARGO_BIN_EXE_nubo"))
        .args([
            "cartridge",
            "list",
            "--server",
            &format!("http://127.0.0.1:{port}"),
        ])
        .env("NUBO_CONFIG", "/nonexistent/cli.toml")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nubo server"), "{err}");
}

#[test]
fn help_lists_the_commands() {
    let o = Command::new(env!("CARGO_BIN_EXE_nubo"))
        .arg("--help")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    for cmd in [
        "server",
        "network-partition",
        "deployment-policy",
        "autoscaling-policy",
        "application-policy",
        "cartridge",
        "cartridge-group",
        "application",
        "kubernetes-cluster",
        "login",
    ] {
        assert!(out.contains(cmd), "--help lacks {cmd}: {out}");
    }
}

#[test]
fn deploy_runtime_members_and_undeploy_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start_with(dir.path(), &[]);
    let proxy = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let examples = crate::support::manifest_dir().join("../../examples/quickstart");
    for (cmd, file) in [
        ("autoscaling-policy", "autoscaling-policy.json"),
        ("network-partition", "network-partition.json"),
        ("deployment-policy", "deployment-policy.json"),
        ("cartridge", "cartridge.json"),
        ("application-policy", "application-policy.json"),
        ("application", "application.json"),
    ] {
        // The example with a free proxy port, so that tests can run side by side.
        let body = std::fs::read_to_string(examples.join(file))
            .unwrap()
            .replace("\"8280\"", &format!("\"{proxy}\""));
        let path = dir.path().join(file);
        std::fs::write(&path, body).unwrap();
        let o = nubo(&s, &[cmd, "add", "-f", path.to_str().unwrap()]);
        assert!(o.status.success(), "{cmd}: {:?}", text(&o));
    }
    let o = nubo(
        &s,
        &[
            "deploy",
            "hello",
            "--policy",
            "quickstart-policy",
            "--timeout",
            "60",
        ],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(out.contains("hello is Active after"), "{out}");
    assert!(
        out.contains(&format!("http://hello.web.localhost:{proxy}")),
        "{out}"
    );
    assert_eq!(
        out.matches(" Active  127.0.0.1:").count(),
        2,
        "two members drawn in the tree: {out}"
    );
    let o = nubo(&s, &["members", "-o", "json"]);
    let members: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(members.as_array().unwrap().len(), 2, "{members}");
    assert_eq!(members[0]["applicationId"], "hello");
    let o = nubo(&s, &["application", "runtime", "hello"]);
    assert!(
        text(&o).0.contains("instance hello-1 [this-host] Active"),
        "{:?}",
        text(&o)
    );
    let o = nubo(&s, &["undeploy", "hello"]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("hello is undeployed"));
    let o = nubo(&s, &["members", "hello"]);
    assert!(!o.status.success(), "not deployed any more");
    assert!(text(&o).1.contains("not deployed"), "{:?}", text(&o));
}

/// The command line is a contract too: every command's help, checked in. Regenerate deliberately
/// with `NUBO_BLESS=1 cargo nextest run -p nubo cli_help`.
#[test]
fn cli_help_matches_the_checked_in_copy() {
    let help = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_nubo"))
            .args(args)
            .arg("--help")
            // No NUBO_* variable of the caller may show up in the help text.
            .env_clear()
            .env("COLUMNS", "100")
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let mut out = format!("$ nubo --help\n{}", help(&[]));
    let commands = [
        vec!["server"],
        vec!["lb"],
        vec!["down"],
        vec!["deploy"],
        vec!["undeploy"],
        vec!["members"],
        vec!["login"],
        vec!["network-partition"],
        vec!["deployment-policy"],
        vec!["autoscaling-policy"],
        vec!["application-policy"],
        vec!["cartridge"],
        vec!["cartridge", "filter"],
        vec!["cartridge-group"],
        vec!["application"],
        vec!["application", "runtime"],
        vec!["kubernetes-cluster"],
        vec!["scaling-events"],
        vec!["tenant"],
        vec!["tenant", "add"],
        vec!["user"],
        vec!["iaas-providers"],
        vec!["logs"],
        vec!["metadata"],
        vec!["metadata", "add"],
    ];
    for c in &commands {
        out.push_str(&format!("\n$ nubo {} --help\n{}", c.join(" "), help(c)));
    }
    let path = crate::support::manifest_dir().join("tests/it/cli-help.txt");
    if std::env::var_os("NUBO_BLESS").is_some() {
        std::fs::write(path, &out).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        out == checked_in,
        "the CLI's help changed: review it and run `NUBO_BLESS=1 cargo nextest run -p nubo cli_help` to accept"
    );
}
