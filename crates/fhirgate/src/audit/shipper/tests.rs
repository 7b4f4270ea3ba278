use std::io::Write as _;
use std::path::PathBuf;

use super::*;
use crate::audit::spool::{self, SpoolError};
use crate::config::{Fsync, Spool as SpoolConfig, WhenFull};

struct Folder(PathBuf);

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn folder() -> Folder {
    let path = std::env::temp_dir().join(format!("fhirgate-spool-{}", uuid::Uuid::new_v4()));
    Folder(path)
}

fn config(root: &Path, max_bytes: u64, when_full: WhenFull) -> SpoolConfig {
    config_with(root, max_bytes, when_full, Fsync::Always)
}

/// Both ways a record is appended: through the writer thread (`always`) and by the
/// appending task itself (`interval`, `never`).
const FSYNC_MODES: [Fsync; 3] = [Fsync::Always, Fsync::Interval, Fsync::Never];

fn config_with(root: &Path, max_bytes: u64, when_full: WhenFull, fsync: Fsync) -> SpoolConfig {
    SpoolConfig {
        path: root.to_owned(),
        max_bytes,
        segment_bytes: 4096,
        fsync,
        fsync_interval: Duration::from_millis(100),
        when_full,
    }
}

fn line(n: usize) -> Vec<u8> {
    format!(
        r#"{{"record_id":"r{n:05}","time":"2026-12-04T00:00:00.000Z","pad":"{}"}}"#,
        "x".repeat(100)
    )
    .into_bytes()
}

fn ids(batch: &Batch) -> Vec<String> {
    batch
        .lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_slice(l).unwrap();
            v["record_id"].as_str().unwrap().to_owned()
        })
        .collect()
}

async fn read_all(root: &Path, from: Position, upto: Position) -> (Vec<String>, Position) {
    let mut at = from;
    let mut found = Vec::new();
    loop {
        let batch = read_batch(root, at, upto, 7).await.unwrap();
        if batch.lines.is_empty() && batch.next == at {
            return (found, at);
        }
        found.extend(ids(&batch));
        at = batch.next;
    }
}

#[tokio::test]
async fn appended_records_are_read_back_in_order_across_segments() {
    for fsync in FSYNC_MODES {
        let dir = folder();
        let metrics = Arc::new(Metrics::default());
        let (handle, writer) = spool::open(
            &config_with(&dir.0, 1 << 20, WhenFull::Refuse, fsync),
            &["a".into()],
            metrics,
        )
        .unwrap();
        for n in 0..100 {
            handle.append(line(n)).await.unwrap();
        }
        let end = handle.shared().committed().borrow().position;
        assert!(end.segment >= 2, "rotated into several segments: {end:?}");
        let (found, at) = read_all(&dir.0, Position::default(), end).await;
        assert_eq!(
            found,
            (0..100).map(|n| format!("r{n:05}")).collect::<Vec<_>>()
        );
        assert_eq!(at, end);
        writer.close().await;
    }
}

#[tokio::test]
async fn a_reopened_spool_resumes_at_the_stored_cursor_and_cuts_a_torn_line() {
    for fsync in FSYNC_MODES {
        let dir = folder();
        let spool_config = config_with(&dir.0, 1 << 20, WhenFull::Refuse, fsync);
        let metrics = Arc::new(Metrics::default());
        let (handle, writer) = spool::open(&spool_config, &["a".into()], metrics.clone()).unwrap();
        for n in 0..10 {
            handle.append(line(n)).await.unwrap();
        }
        let end = handle.shared().committed().borrow().position;
        let batch = read_batch(&dir.0, Position::default(), end, 4)
            .await
            .unwrap();
        handle.shared().store_cursor("a", batch.next).unwrap();
        writer.close().await;
        // A crash in the middle of a write leaves half a line behind.
        let segment = spool::segment_path(&dir.0, end.segment);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&segment)
            .unwrap();
        file.write_all(br#"{"record_id":"torn"#).unwrap();
        drop(file);

        let (handle, writer) = spool::open(&spool_config, &["a".into()], metrics).unwrap();
        let cursor = handle.shared().cursor("a");
        assert_eq!(cursor, batch.next);
        handle.append(line(10)).await.unwrap();
        let end = handle.shared().committed().borrow().position;
        let (found, _) = read_all(&dir.0, cursor, end).await;
        assert_eq!(
            found,
            (4..11).map(|n| format!("r{n:05}")).collect::<Vec<_>>(),
            "records after the cursor, the torn line gone"
        );
        writer.close().await;
    }
}

#[tokio::test]
async fn a_full_spool_refuses_until_the_sinks_catch_up() {
    for fsync in FSYNC_MODES {
        let dir = folder();
        let metrics = Arc::new(Metrics::default());
        let (handle, writer) = spool::open(
            &config_with(&dir.0, 3 * 4096, WhenFull::Refuse, fsync),
            &["slow".into()],
            metrics,
        )
        .unwrap();
        let mut appended = 0;
        let refusal = loop {
            match handle.append(line(appended)).await {
                Ok(()) => appended += 1,
                Err(error) => break error,
            }
            assert!(appended < 1000, "the spool never filled");
        };
        assert!(matches!(refusal, SpoolError::Full { .. }), "{refusal}");
        assert!(!handle.accepting());
        // The sink takes everything: its cursor moves to the end and the segments go.
        let end = handle.shared().committed().borrow().position;
        handle.shared().store_cursor("slow", end).unwrap();
        handle.shipped();
        handle.append(line(appended)).await.unwrap();
        assert!(handle.accepting());
        assert!(
            handle.shared().bytes() < 4096 * 2,
            "{}",
            handle.shared().bytes()
        );
        writer.close().await;
    }
}

#[tokio::test]
async fn drop_oldest_keeps_taking_records_and_counts_what_it_dropped() {
    for fsync in FSYNC_MODES {
        let dir = folder();
        let metrics = Arc::new(Metrics::default());
        let (handle, writer) = spool::open(
            &config_with(&dir.0, 3 * 4096, WhenFull::DropOldest, fsync),
            &["never".into()],
            metrics.clone(),
        )
        .unwrap();
        for n in 0..300 {
            handle.append(line(n)).await.unwrap();
        }
        assert!(handle.accepting());
        assert!(handle.shared().bytes() <= 3 * 4096);
        let text = metrics.encode();
        let dropped: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("fhirgate_audit_dropped_records_total "))
            .unwrap()
            .parse()
            .unwrap();
        // What is left to read plus what was dropped is everything.
        let end = handle.shared().committed().borrow().position;
        let (left, _) = read_all(&dir.0, handle.shared().cursor("never"), end).await;
        assert_eq!(left.len() as u64 + dropped, 300, "{dropped} dropped");
        assert_eq!(left.last().map(String::as_str), Some("r00299"));
        writer.close().await;
    }
}

#[tokio::test]
async fn a_shipper_retries_a_failing_sink_and_moves_its_cursor_only_on_success() {
    let dir = folder();
    let metrics = Arc::new(Metrics::default());
    let (handle, writer) = spool::open(
        &config(&dir.0, 1 << 20, WhenFull::Refuse),
        &["collector".into()],
        metrics.clone(),
    )
    .unwrap();
    // A collector that is down: nothing listens on the port yet.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let sink = crate::config::Sink::Http(crate::config::NetworkSink {
        url: serde_saphyr::from_str(&format!("\"http://{address}/records\"")).unwrap(),
        site: None,
        batch: 5,
        timeout: Duration::from_secs(2),
        backoff_max: Duration::from_millis(200),
        bearer_token_file: None,
        bearer_token_env: None,
    });
    let source = crate::audit::EventSource {
        observer: "test".into(),
        site: None,
        public_base: "http://gw.example/fhir".into(),
    };
    let sink = super::Sink::open("collector", &sink, &reqwest::Client::new(), &source).unwrap();
    let shipper = Shipper {
        name: "collector".into(),
        sink,
        batch: 5,
        backoff_max: Duration::from_millis(200),
        spool: handle.clone(),
        metrics: metrics.clone(),
    };
    let (control, watching) = watch::channel(Run::Ship);
    let lag = Arc::new(Lag::default());
    let task = tokio::spawn(shipper.run(watching, lag.clone()));
    for n in 0..12 {
        handle.append(line(n)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(handle.shared().cursor("collector"), Position::default());
    assert_eq!(lag.records.load(Ordering::Relaxed), 12);
    assert!(lag.oldest_age() > 0.0);

    // The collector comes up and takes everything.
    let received = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let server = {
        let received = received.clone();
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let received = received.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: http::Request<hyper::body::Incoming>| {
                            let received = received.clone();
                            async move {
                                use http_body_util::BodyExt as _;
                                let body = request.into_body().collect().await.unwrap().to_bytes();
                                let records: Vec<serde_json::Value> =
                                    serde_json::from_slice(&body).unwrap();
                                received.lock().unwrap().extend(
                                    records
                                        .iter()
                                        .map(|r| r["record_id"].as_str().unwrap().to_owned()),
                                );
                                Ok::<_, std::convert::Infallible>(http::Response::new(
                                    http_body_util::Full::new(Bytes::new()),
                                ))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        })
    };
    let end = handle.shared().committed().borrow().position;
    for _ in 0..100 {
        if handle.shared().cursor("collector") == end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(handle.shared().cursor("collector"), end);
    assert_eq!(
        *received.lock().unwrap(),
        (0..12).map(|n| format!("r{n:05}")).collect::<Vec<_>>()
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(lag.records.load(Ordering::Relaxed), 0);
    assert_eq!(lag.oldest_age(), 0.0);
    let _ = control.send(Run::Drain(Instant::now()));
    task.await.unwrap();
    server.abort();
    writer.close().await;
}

#[tokio::test]
async fn a_backlog_from_before_a_restart_counts_as_unshipped() {
    let dir = folder();
    let spool_config = config(&dir.0, 1 << 20, WhenFull::Refuse);
    let metrics = Arc::new(Metrics::default());
    let (handle, writer) = spool::open(&spool_config, &["down".into()], metrics.clone()).unwrap();
    for n in 0..7 {
        handle.append(line(n)).await.unwrap();
    }
    writer.close().await;

    let (handle, writer) = spool::open(&spool_config, &["down".into()], metrics.clone()).unwrap();
    handle.append(line(7)).await.unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let sink = crate::config::Sink::Http(crate::config::NetworkSink {
        url: serde_saphyr::from_str(&format!("\"http://{address}/records\"")).unwrap(),
        site: None,
        batch: 5,
        timeout: Duration::from_secs(1),
        backoff_max: Duration::from_millis(100),
        bearer_token_file: None,
        bearer_token_env: None,
    });
    let source = crate::audit::EventSource {
        observer: "test".into(),
        site: None,
        public_base: "http://gw.example/fhir".into(),
    };
    let shipper = Shipper {
        name: "down".into(),
        sink: super::Sink::open("down", &sink, &reqwest::Client::new(), &source).unwrap(),
        batch: 5,
        backoff_max: Duration::from_millis(100),
        spool: handle.clone(),
        metrics,
    };
    let (control, watching) = watch::channel(Run::Ship);
    let lag = Arc::new(Lag::default());
    let task = tokio::spawn(shipper.run(watching, lag.clone()));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        lag.records.load(Ordering::Relaxed),
        8,
        "7 from before the restart, 1 after"
    );
    let _ = control.send(Run::Drain(Instant::now()));
    task.await.unwrap();
    writer.close().await;
}

#[tokio::test]
async fn a_closed_spool_takes_no_more_records() {
    for fsync in FSYNC_MODES {
        let dir = folder();
        let metrics = Arc::new(Metrics::default());
        let spool_config = config_with(&dir.0, 1 << 20, WhenFull::Refuse, fsync);
        let (handle, writer) = spool::open(&spool_config, &["a".into()], metrics.clone()).unwrap();
        handle.append(line(0)).await.unwrap();
        writer.close().await;
        let refused = handle.append(line(1)).await;
        assert!(
            matches!(refused, Err(SpoolError::Closed)),
            "{fsync:?}: {refused:?}"
        );
        // The lock went with the close: another process may open the spool now.
        let (handle, writer) = spool::open(&spool_config, &["a".into()], metrics).unwrap();
        let end = handle.shared().committed().borrow().position;
        let (found, _) = read_all(&dir.0, Position::default(), end).await;
        assert_eq!(found, vec!["r00000".to_owned()], "{fsync:?}");
        writer.close().await;
    }
}
