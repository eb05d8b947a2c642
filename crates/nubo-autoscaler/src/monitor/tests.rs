//! The monitor's tests.

use super::*;

fn event(app: &str, at_ms: u64) -> ScalingEvent {
    ScalingEvent {
        at_ms,
        application_id: app.into(),
        cluster_id: format!("{app}.web.domain"),
        instance_id: format!("{app}-1"),
        decision: Decision::ScaleDown,
        required: rules::Required {
            requests_in_flight: None,
            memory: None,
            load: Some(1),
            count: Some(1),
            reason: None,
            dependents: None,
        },
        predicted: Predicted {
            requests_in_flight: None,
            memory_consumption: None,
            load_average: Some(3.0),
        },
        thresholds: nubo_plan::Thresholds::default(),
        active: 2,
        starting: 0,
        min: 1,
        max: 4,
    }
}

#[tokio::test]
async fn a_server_without_an_autoscaler_reads_the_persisted_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let store = nubo_store::SqliteStore::open(&dir.path().join("nubo.db"))
        .await
        .unwrap();
    assert_eq!(
        recorded_for_application(&store, "a").await.unwrap(),
        [],
        "none yet"
    );
    let log = ScalingLog::default();
    log.push(event("a", 1));
    log.push(event("b", 2));
    log.push(event("a", 3));
    log.persist(&store).await;
    assert_eq!(
        recorded_for_application(&store, "a").await.unwrap(),
        [event("a", 1), event("a", 3)]
    );
    assert_eq!(
        recorded_for_application(&store, "b").await.unwrap(),
        log.for_application("b")
    );
}
