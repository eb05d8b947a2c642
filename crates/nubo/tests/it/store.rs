//! `--store`: the server on PostgreSQL keeps artifacts in the database, not in its data directory;
//! the location comes from the flag, the environment or the configuration file, in that order.

use crate::support::{Api, ServerProcess, fixture_artifact};

#[tokio::test]
async fn artifacts_survive_a_restart_on_postgres() {
    let Some(db) = nubo_store::conformance::TempPostgres::create_or_skip(
        "artifacts_survive_a_restart_on_postgres",
    )
    .await
    else {
        return;
    };
    let first_dir = tempfile::tempdir().unwrap();
    let mut s = ServerProcess::start_with(
        first_dir.path(),
        &["--insecure-http", "--store", db.url(), "--mock-iaas", "-"],
    );
    let api = Api::new(&s);
    assert_eq!(
        api.get("/health").await,
        (
            200,
            serde_json::json!({"status": "ok", "store": "postgres", "controller": "local"})
        )
    );
    api.add_all(&[
        (
            "networkPartitions",
            fixture_artifact("network-partition.json"),
        ),
        ("cartridges", fixture_artifact("cartridge.json")),
    ])
    .await;
    let np_before = api.get("/api/networkPartitions/np-fixture").await;
    let cartridge_before = api.get("/api/cartridges/web").await;
    assert_eq!(np_before.0, 200);
    assert_eq!(cartridge_before.0, 200);
    assert!(s.terminate(), "SIGTERM ends the server cleanly");
    assert!(
        !first_dir.path().join("nubo.db").exists(),
        "nothing is stored in SQLite when --store names PostgreSQL"
    );

    // Another server, with an empty data directory of its own: everything comes from the
    // database, but the key that seals the platform's secrets, which the store does not hold.
    let second_dir = tempfile::tempdir().unwrap();
    let said = failing_server(second_dir.path(), &["--store", db.url()], &[]);
    assert!(
        said.contains("sealed with the secrets key") && said.contains("--secrets-key"),
        "a server without the platform's secrets key refuses to start: {said}"
    );
    assert!(
        !second_dir.path().join("secrets.key").exists(),
        "and makes no key of its own"
    );
    let key = first_dir.path().join("secrets.key").display().to_string();
    let s = ServerProcess::start_with(
        second_dir.path(),
        &[
            "--insecure-http",
            "--store",
            db.url(),
            "--secrets-key",
            &key,
            "--mock-iaas",
            "-",
        ],
    );
    let api = Api::new(&s);
    assert_eq!(
        api.get("/api/networkPartitions/np-fixture").await,
        np_before
    );
    assert_eq!(api.get("/api/cartridges/web").await, cartridge_before);
    let (status, all) = api.get("/api/cartridges").await;
    assert_eq!((status, all.as_array().map(Vec::len)), (200, Some(1)));
    // A duplicate is still refused: the database's constraints hold across servers.
    let (status, answer) = api
        .post("/api/cartridges", fixture_artifact("cartridge.json"))
        .await;
    assert_eq!(status, 409, "{answer}");
}

/// `nubo server` with these arguments and environment, expected to fail at once: its stderr.
fn failing_server(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nubo"));
    cmd.arg("server")
        .arg("--data-dir")
        .arg(dir)
        .args([
            "--insecure-http",
            "--api-addr",
            "127.0.0.1:0",
            "--bus-addr",
            "127.0.0.1:0",
        ])
        .args(args)
        .env_remove("NUBO_STORE")
        .env_remove("NUBO_SERVER_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{args:?} {env:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn the_store_comes_from_the_flag_the_environment_or_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("elsewhere.db");
    let cfg = dir.path().join("server.toml");
    std::fs::write(&cfg, format!("store = \"sqlite://{}\"\n", db.display())).unwrap();
    let s = ServerProcess::start_with(
        dir.path(),
        &["--insecure-http", "--config", cfg.to_str().unwrap()],
    );
    assert_eq!(
        Api::new(&s).get("/health").await,
        (
            200,
            serde_json::json!({"status": "ok", "store": "sqlite", "controller": "local"})
        )
    );
    drop(s);
    assert!(
        db.exists(),
        "the SQLite file named in the configuration file"
    );
    assert!(!dir.path().join("nubo.db").exists());

    // Nothing listens on a port just released: the error names the location and what to do.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let refused = |db: &str| format!("postgres://nubo:secret@127.0.0.1:{closed}/{db}");
    let other = tempfile::tempdir().unwrap();
    // The environment wins over the file.
    let err = failing_server(
        other.path(),
        &["--config", cfg.to_str().unwrap()],
        &[("NUBO_STORE", &refused("from_env"))],
    );
    assert!(
        err.contains(&format!(
            "cannot open the store postgres://nubo:***@127.0.0.1:{closed}/from_env"
        )) && err.contains("start PostgreSQL")
            && !err.contains("secret"),
        "{err}"
    );
    // The flag wins over the environment.
    let err = failing_server(
        other.path(),
        &["--store", &refused("from_flag")],
        &[("NUBO_STORE", &refused("from_env"))],
    );
    assert!(err.contains("/from_flag"), "{err}");
    // A location that names no backend.
    std::fs::write(&cfg, "store = \"mysql://root:secret@db/nubo\"\n").unwrap();
    let err = failing_server(other.path(), &["--config", cfg.to_str().unwrap()], &[]);
    assert!(
        err.contains("`store` in")
            && err.contains("postgres://USER:PASSWORD@HOST:PORT/DATABASE")
            && !err.contains("secret"),
        "{err}"
    );
}
