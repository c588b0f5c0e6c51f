//! Schemathesis (from PyPI) against a real `acms` process with two app servers and their users:
//! generated requests to every operation of the served OpenAPI document, valid and invalid, find
//! no 5xx and no response that breaks the document's schemas.
//!
//! `.ci/run` installs schemathesis, so CI always runs this (and fails without it); elsewhere a
//! machine without it skips with a message. `SCHEMATHESIS` may name the program.

use std::path::PathBuf;

use acms_tests::process::{ADMIN_TOKEN, start_hub};
use acms_tests::{TestServer, user};
use tokio::process::Command;

/// The schemathesis program: `$SCHEMATHESIS`, else on `PATH`, else where `pip install --user`
/// puts it.
fn schemathesis() -> Option<PathBuf> {
    if let Some(program) = std::env::var_os("SCHEMATHESIS") {
        return Some(PathBuf::from(program));
    }
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|path| {
        std::env::split_paths(&path).map(|dir| dir.join("schemathesis")).collect::<Vec<_>>()
    });
    let user_bin =
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/bin/schemathesis"));
    on_path.chain(user_bin).find(|candidate| candidate.is_file())
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let Some(schemathesis) = schemathesis() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have schemathesis: scripts/test.sh installs it"
        );
        eprintln!(
            "SKIPPED: schemathesis is not installed (python3 -m pip install --user schemathesis); \
             scripts/test.sh installs it"
        );
        return;
    };
    let (mut hub, transfer, admin) = start_hub().await;

    let one = TestServer::start(1, transfer).await;
    let two = TestServer::start(2, transfer).await;
    one.login(&["alice"]).await;
    two.login(&["bob", "carol"]).await;
    let room = acms_appserver::GroupId::new("room").unwrap();
    one.cluster.join(&room, &user("alice")).await.unwrap();
    two.cluster.join(&room, &user("carol")).await.unwrap();
    // The apps read their events so the servers keep acknowledging pushes.
    for TestServer { cluster, mut events } in [one, two] {
        tokio::spawn(async move {
            while events.recv().await.is_some() {}
            drop(cluster);
        });
    }

    let output = Command::new(&schemathesis)
        .arg("run")
        .arg(format!("http://{admin}/api/openapi.json"))
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        .args(["--max-examples", "25"])
        .args(["--request-timeout", "10"])
        .args(["--header", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(300), output)
        .await
        .expect("schemathesis done within 5 minutes")
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // It did test the operations, not just load the document.
    let tested = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("Tested: "))
        .and_then(|count| count.trim().parse::<usize>().ok());
    assert!(tested.is_some_and(|count| count >= 8), "{stdout}");

    hub.terminate().await;
    let log = hub.exits_cleanly().await;
    assert!(!log.iter().any(|line| line.contains("panicked")), "{}", log.join("\n"));
}
