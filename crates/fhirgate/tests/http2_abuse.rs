//! HTTP/2 abuse against the cleartext listener (HTTP/2 by prior knowledge): rapid reset
//! (CVE-2023-44487), CONTINUATION floods, streams over the concurrency limit and header lists
//! over the size limit. Abusive clients write frames by hand on a TCP stream, so each attack
//! arrives exactly as written; a well-behaved client on another connection is served
//! throughout, and nothing of the abusive connections reaches the FHIR server.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const PATIENT_A: &str = r#"{"resourceType":"Patient","id":"pat-A"}"#;

/// Frame types and flags (RFC 9113 section 6) and error codes (section 7).
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

struct World {
    idp: FakeIdp,
    fhir: FakeFhir,
    gateway: TestGateway,
}

async fn world() -> World {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    let limits = r#"
limits:
  max_token_length: 4096
  connections:
    max_header_bytes: 8192
    http2:
      max_concurrent_streams: 4
      max_pending_accept_reset_streams: 20
      max_local_error_reset_streams: 10
"#;
    let gateway = TestGateway::start_with_sections(&idp, fhir.addr, "", "", limits).await;
    World { idp, fhir, gateway }
}

impl World {
    fn token(&self) -> String {
        sign(
            "rsa-a",
            Some("rsa-a"),
            &claims(&self.idp.issuer, "patient/*.rs"),
        )
    }

    fn listen_addr(&self) -> SocketAddr {
        let authority = self.gateway.base.trim_start_matches("http://");
        authority.trim_end_matches("/fhir").parse().unwrap()
    }

    /// A well-behaved HTTP/2 client's read of `Patient/pat-A`, on a connection of its own.
    async fn read_patient(&self) -> u16 {
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let response = client
            .get(format!("{}/Patient/pat-A", self.gateway.base))
            .bearer_auth(self.token())
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        response.status().as_u16()
    }

    async fn abuse_hits(&self) -> f64 {
        let text = client()
            .get(format!("{}/metrics", self.gateway.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let series = r#"fhirgate_limit_hits_total{limit="http2_abuse"} "#;
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.parse().ok())
            .unwrap()
    }

    /// Only the well-behaved client's `reads` reached the FHIR server.
    fn upstream_saw_only_reads(&self, reads: usize) {
        let seen = self.fhir.seen();
        assert_eq!(seen.len(), reads, "{seen:?}");
        assert!(seen.iter().all(|s| s.uri.ends_with("/fhir/Patient/pat-A")));
    }
}

/// One frame as read.
#[derive(Debug)]
struct Frame {
    kind: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap();
    let mut out = length.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix, the prefix's high bits from `first`.
fn hpack_int(first: u8, n: u32, value: usize) -> Vec<u8> {
    let max = (1usize << n) - 1;
    if value < max {
        return vec![first | u8::try_from(value).unwrap()];
    }
    let mut out = vec![first | u8::try_from(max).unwrap()];
    let mut rest = value - max;
    while rest >= 128 {
        out.push(u8::try_from(rest % 128).unwrap() | 0x80);
        rest /= 128;
    }
    out.push(u8::try_from(rest).unwrap());
    out
}

fn hpack_string(text: &str) -> Vec<u8> {
    let mut out = hpack_int(0, 7, text.len());
    out.extend(text.as_bytes());
    out
}

/// A header field with a new name, not indexed.
fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x00];
    out.extend(hpack_string(name));
    out.extend(hpack_string(value));
    out
}

/// The request pseudo-headers of `GET http://gw{path}`.
fn get_block(path: &str) -> Vec<u8> {
    let mut out = vec![0x82, 0x86]; // :method GET, :scheme http
    out.push(0x04); // :path, name from the static table
    out.extend(hpack_string(path));
    out.push(0x01); // :authority, name from the static table
    out.extend(hpack_string("gw"));
    out
}

/// A client connection that writes frames as given.
struct RawH2 {
    stream: TcpStream,
    read: Vec<u8>,
}

impl RawH2 {
    /// Connects, exchanges the preface and settings.
    async fn connect(addr: SocketAddr) -> Self {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        stream.write_all(&hello).await.unwrap();
        let mut raw = Self {
            stream,
            read: Vec::new(),
        };
        loop {
            let frame = raw.next_frame().await.expect("the server's settings");
            if frame.kind == SETTINGS {
                break;
            }
        }
        raw.send(&frame(SETTINGS, ACK, 0, &[])).await;
        raw
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next frame, or `None` once the connection is closed.
    async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if self.read.len() >= 9 {
                let length = usize::try_from(u32::from_be_bytes([
                    0,
                    self.read[0],
                    self.read[1],
                    self.read[2],
                ]))
                .unwrap();
                if self.read.len() >= 9 + length {
                    let head: Vec<u8> = self.read.drain(..9).collect();
                    let payload = self.read.drain(..length).collect();
                    let stream = u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff;
                    return Some(Frame {
                        kind: head[3],
                        stream,
                        payload,
                    });
                }
            }
            let mut buf = [0u8; 16 * 1024];
            match self.stream.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.read.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Every frame until the server closes the connection (within a generous deadline).
    async fn frames_until_closed(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(frame) = self.next_frame().await {
                frames.push(frame);
            }
        })
        .await;
        assert!(read.is_ok(), "the gateway did not close the connection");
        frames
    }
}

/// The error code of the connection's GOAWAY.
fn goaway_code(frames: &[Frame]) -> u32 {
    frames
        .iter()
        .find(|f| f.kind == GOAWAY)
        .unwrap_or_else(|| panic!("no GOAWAY in {frames:?}"))
        .error_code()
}

#[tokio::test]
async fn rapid_reset_is_answered_with_goaway_and_others_are_served() {
    let w = world().await;
    let mut abuser = RawH2::connect(w.listen_addr()).await;
    let mut burst = Vec::new();
    for i in 0..500u32 {
        let id = 2 * i + 1;
        let block = get_block("/fhir/Patient/pat-A");
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
        burst.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    abuser.send(&burst).await;
    assert_eq!(w.read_patient().await, 200);

    let frames = abuser.frames_until_closed().await;
    assert_eq!(goaway_code(&frames), ENHANCE_YOUR_CALM);
    assert_eq!(w.read_patient().await, 200);
    w.upstream_saw_only_reads(2);
    wait_for("the abuse counted", async || w.abuse_hits().await >= 1.0).await;
}

#[tokio::test]
async fn a_continuation_flood_is_answered_with_goaway_and_others_are_served() {
    let w = world().await;
    let mut abuser = RawH2::connect(w.listen_addr()).await;
    let mut flood = frame(HEADERS, END_STREAM, 1, &get_block("/fhir/Patient/pat-A"));
    for i in 0..1000 {
        let field = literal(&format!("x-flood-{i}"), "1");
        flood.extend(frame(CONTINUATION, 0, 1, &field));
    }
    abuser.send(&flood).await;
    assert_eq!(w.read_patient().await, 200);

    let frames = abuser.frames_until_closed().await;
    assert_eq!(goaway_code(&frames), ENHANCE_YOUR_CALM);
    w.upstream_saw_only_reads(1);
    wait_for("the abuse counted", async || w.abuse_hits().await >= 1.0).await;
}

#[tokio::test]
async fn streams_over_max_concurrent_streams_are_refused_then_the_connection_gets_goaway() {
    let w = world().await;
    let mut abuser = RawH2::connect(w.listen_addr()).await;
    // Forty requests whose bodies never come: four may be open at once.
    let mut burst = Vec::new();
    for i in 0..40u32 {
        let block = get_block("/fhir/Patient/pat-A");
        burst.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &block));
    }
    abuser.send(&burst).await;
    assert_eq!(w.read_patient().await, 200);

    let frames = abuser.frames_until_closed().await;
    let refused: Vec<_> = frames
        .iter()
        .filter(|f| f.kind == RST_STREAM && f.error_code() == REFUSED_STREAM)
        .collect();
    assert!(refused.len() >= 10, "{frames:?}");
    // The first four streams were taken up; only those after them were refused.
    assert!(refused.iter().all(|f| f.stream > 7), "{refused:?}");
    assert_eq!(goaway_code(&frames), ENHANCE_YOUR_CALM);
    w.upstream_saw_only_reads(1);
    wait_for("the abuse counted", async || w.abuse_hits().await >= 1.0).await;
}

#[tokio::test]
async fn a_header_list_over_max_header_bytes_gets_431_and_the_connection_goes_on() {
    let w = world().await;
    let tcp = TcpStream::connect(w.listen_addr()).await.unwrap();
    let (mut sender, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = |extra: Option<String>| {
        let mut request = http::Request::get(format!("{}/Patient/pat-A", w.gateway.base))
            .header("authorization", format!("Bearer {}", w.token()));
        if let Some(extra) = extra {
            request = request.header("x-large", extra);
        }
        request.body(()).unwrap()
    };

    let (answer, _) = sender
        .send_request(request(Some("a".repeat(12_000))), true)
        .unwrap();
    assert_eq!(answer.await.unwrap().status(), 431);
    assert!(
        w.fhir.seen().is_empty(),
        "the large request is not forwarded"
    );

    // The same connection serves a request within the limit.
    let mut sender = sender.ready().await.unwrap();
    let (answer, _) = sender.send_request(request(None), true).unwrap();
    assert_eq!(answer.await.unwrap().status(), 200);
    w.upstream_saw_only_reads(1);
}
