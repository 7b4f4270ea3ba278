//! Content codings: upstream bodies the gateway must read are decoded whatever their
//! `Content-Encoding` (gzip, deflate, br), never beyond the size limit of checked responses.
//! What the gateway sends is compressed for clients that accept it by the server's
//! compression layer (`server.rs`).

use std::io::Read as _;

use bytes::Bytes;
use http::HeaderValue;

/// Why an upstream body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported content coding {0:?}")]
    Unsupported(String),
    #[error("the {coding} body is corrupt: {source}")]
    Corrupt {
        coding: &'static str,
        source: std::io::Error,
    },
    #[error("the decoded body is larger than {limit} bytes")]
    TooLarge { limit: usize },
}

/// The body decoded by its `Content-Encoding` (a list, applied in order), at most `limit`
/// bytes once decoded.
pub fn decode(
    encoding: Option<&HeaderValue>,
    body: Bytes,
    limit: usize,
) -> Result<Bytes, DecodeError> {
    let Some(encoding) = encoding else {
        return Ok(body);
    };
    let text = encoding.to_str().map_err(|_| {
        DecodeError::Unsupported(String::from_utf8_lossy(encoding.as_bytes()).into())
    })?;
    let mut body = body;
    // Codings are listed in the order they were applied: undo them from the last.
    for coding in text.rsplit(',').map(|c| c.trim().to_ascii_lowercase()) {
        body = match coding.as_str() {
            "" | "identity" => body,
            "gzip" | "x-gzip" => {
                read_all(flate2::read::MultiGzDecoder::new(&body[..]), "gzip", limit)?
            }
            "deflate" => inflate(&body, limit)?,
            "br" => read_all(brotli::Decompressor::new(&body[..], 8192), "br", limit)?,
            other => return Err(DecodeError::Unsupported(other.to_owned())),
        };
    }
    Ok(body)
}

/// `deflate` is zlib-wrapped by the standard, raw by some servers: both are read.
fn inflate(body: &[u8], limit: usize) -> Result<Bytes, DecodeError> {
    match read_all(flate2::read::ZlibDecoder::new(body), "deflate", limit) {
        Err(DecodeError::Corrupt { .. }) => {
            read_all(flate2::read::DeflateDecoder::new(body), "deflate", limit)
        }
        other => other,
    }
}

fn read_all(
    reader: impl std::io::Read,
    coding: &'static str,
    limit: usize,
) -> Result<Bytes, DecodeError> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|source| DecodeError::Corrupt { coding, source })?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge { limit });
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    const TEXT: &[u8] = br#"{"resourceType":"Patient","id":"pat-A"}"#;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut encoder =
            flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn br(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut writer = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        writer.write_all(data).unwrap();
        drop(writer);
        out
    }

    fn decoded(coding: &str, body: Vec<u8>) -> Result<Bytes, DecodeError> {
        decode(
            Some(&HeaderValue::from_str(coding).unwrap()),
            Bytes::from(body),
            1 << 20,
        )
    }

    #[test]
    fn every_coding_decodes_to_the_same_text() {
        for (coding, body) in [
            ("gzip", gzip(TEXT)),
            ("x-gzip", gzip(TEXT)),
            ("deflate", zlib(TEXT)),
            ("deflate", raw_deflate(TEXT)),
            ("br", br(TEXT)),
            ("identity", TEXT.to_vec()),
            ("gzip, br", br(&gzip(TEXT))),
        ] {
            assert_eq!(decoded(coding, body).unwrap(), TEXT, "{coding}");
        }
        assert_eq!(decode(None, Bytes::from_static(TEXT), 10).unwrap(), TEXT);
    }

    #[test]
    fn bombs_corrupt_bodies_and_unknown_codings_are_errors() {
        let bomb = gzip(&vec![b'a'; 10 << 20]);
        assert!(matches!(
            decoded("gzip", bomb),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(matches!(
            decoded("gzip", b"not gzip".to_vec()),
            Err(DecodeError::Corrupt { .. })
        ));
        assert!(matches!(
            decoded("compress", TEXT.to_vec()),
            Err(DecodeError::Unsupported(_))
        ));
    }
}
