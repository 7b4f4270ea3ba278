use http_body_util::BodyExt as _;
use proptest::prelude::*;

use super::*;

const UPSTREAM: &str = "http://10.0.0.5:8091/fhir";
const PUBLIC: &str = "https://gw.example.org/fhir";

fn rewrite() -> Rewrite {
    Rewrite::new(UPSTREAM, PUBLIC).unwrap()
}

fn apply(text: &str) -> String {
    rewrite()
        .apply(text.as_bytes())
        .map_or_else(|| text.to_owned(), |out| String::from_utf8(out).unwrap())
}

#[test]
fn whole_base_prefixes_are_replaced_and_nothing_else() {
    assert_eq!(
        apply(
            r#"{"url":"http://10.0.0.5:8091/fhir/Patient?_count=5","fullUrl":"http://10.0.0.5:8091/fhir/Patient/1"}"#
        ),
        r#"{"url":"https://gw.example.org/fhir/Patient?_count=5","fullUrl":"https://gw.example.org/fhir/Patient/1"}"#
    );
    assert_eq!(
        apply(r#""http://10.0.0.5:8091/fhir""#),
        r#""https://gw.example.org/fhir""#
    );
    assert_eq!(
        apply("http://10.0.0.5:8091/fhir?x"),
        "https://gw.example.org/fhir?x"
    );
    assert_eq!(
        apply("http://10.0.0.5:8091/fhir"),
        "https://gw.example.org/fhir"
    );
    // Not a prefix of this base: another path, another port.
    for other in [
        r#""http://10.0.0.5:8091/fhirx/Patient/1""#,
        r#""http://10.0.0.5:80910/fhir/Patient/1""#,
        r#""http://10.0.0.5:8091/fhir2""#,
    ] {
        assert_eq!(apply(other), other);
    }
}

#[test]
fn the_json_escaped_form_is_replaced_too() {
    assert_eq!(
        apply(r#"{"url":"http:\/\/10.0.0.5:8091\/fhir\/Patient\/1"}"#),
        r#"{"url":"https:\/\/gw.example.org\/fhir\/Patient\/1"}"#
    );
}

#[test]
fn headers_are_rewritten_at_their_start_only() {
    let value = HeaderValue::from_static("http://10.0.0.5:8091/fhir/Patient/1/_history/2");
    assert_eq!(
        rewrite().header_value(&value).unwrap(),
        "https://gw.example.org/fhir/Patient/1/_history/2"
    );
    assert!(
        rewrite()
            .header_value(&HeaderValue::from_static("Patient/1"))
            .is_none()
    );
    assert!(
        rewrite()
            .header_value(&HeaderValue::from_static("http://10.0.0.5:8091/fhirx"))
            .is_none()
    );
}

#[test]
fn the_same_base_needs_no_rewrite() {
    assert!(Rewrite::new(PUBLIC, "https://gw.example.org/fhir/").is_none());
}

fn streamed(chunks: Vec<Vec<u8>>) -> Vec<u8> {
    let stream = futures_stream(chunks);
    let body = std::sync::Arc::new(rewrite()).stream(stream);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async { body.collect().await.unwrap().to_bytes().to_vec() })
}

/// A body that yields the given chunks one frame each.
struct Chunks(std::collections::VecDeque<Bytes>);

impl HttpBody for Chunks {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }
}

fn futures_stream(chunks: Vec<Vec<u8>>) -> Body {
    Chunks(chunks.into_iter().map(Bytes::from).collect()).boxed_unsync()
}

proptest! {
    /// However a body is cut into frames, the stream says what the whole text says.
    #[test]
    fn a_stream_cut_anywhere_rewrites_like_the_whole(
        parts in proptest::collection::vec(
            prop_oneof![
                Just(UPSTREAM.to_owned()),
                Just("/Patient/1\",".to_owned()),
                Just(UPSTREAM.replace('/', "\\/")),
                Just("x".to_owned()),
                Just("\"".to_owned()),
                Just("http://10.0.0.5:8091/fhi".to_owned()),
            ],
            0..20,
        ),
        cuts in proptest::collection::vec(0usize..400, 0..8),
    ) {
        let text = parts.concat().into_bytes();
        let whole = rewrite().apply(&text).unwrap_or_else(|| text.clone());
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for cut in cuts {
            chunks.push(text[start..cut].to_vec());
            start = cut;
        }
        chunks.push(text[start..].to_vec());
        prop_assert_eq!(streamed(chunks), whole);
    }
}

/// The same rewrite searching for each form of the base on its own.
fn searching_each_form(rewrite: &Rewrite) -> Rewrite {
    Rewrite {
        anchor: None,
        ..rewrite.clone()
    }
}

#[test]
fn every_form_is_found_through_its_anchor() {
    let rewrite = rewrite();
    assert!(rewrite.anchor.is_some());
    for text in [
        "http%3A%2F%2F10.0.0.5%3A8091%2Ffhir%2FPatient",
        "http%3a%2f%2f10.0.0.5%3a8091%2ffhir&x",
        "10.0.0.5 http:\\/\\/10.0.0.5:8091\\/fhir\\/Patient 10.0.0.5",
    ] {
        let anchored = rewrite.apply(text.as_bytes());
        assert!(anchored.is_some(), "{text}");
        assert_eq!(
            anchored,
            searching_each_form(&rewrite).apply(text.as_bytes())
        );
    }
}

proptest! {
    /// One search for the anchor finds what a search for each form finds, towards the
    /// upstream (whole prefixes only) and towards clients (anywhere).
    #[test]
    fn the_anchored_search_finds_what_each_form_finds(
        parts in proptest::collection::vec(
            prop_oneof![
                Just(UPSTREAM.to_owned()),
                Just(UPSTREAM.replace('/', "\\/")),
                Just(UPSTREAM.replace(':', "%3A").replace('/', "%2F")),
                Just(UPSTREAM.replace(':', "%3a").replace('/', "%2f")),
                Just("10.0.0.5".to_owned()),
                Just("http://10.0.0.5:8091/fhi".to_owned()),
                Just("/Patient/1\",".to_owned()),
                Just("x".to_owned()),
                Just("\\".to_owned()),
                Just("\"".to_owned()),
            ],
            0..20,
        ),
        limit in 0usize..500,
        at_end in any::<bool>(),
    ) {
        let text = parts.concat().into_bytes();
        let limit = limit.min(text.len());
        for rewrite in [rewrite(), Rewrite::hiding(UPSTREAM, PUBLIC).unwrap()] {
            prop_assert_eq!(
                rewrite.apply_until(&text, limit, at_end),
                searching_each_form(&rewrite).apply_until(&text, limit, at_end)
            );
        }
    }
}
