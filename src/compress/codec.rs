//! Codecs: the content codings Rampart produces and decodes, on Pingora's encoders.
//!
//! Pingora ships the encoders (`Algorithm::compressor`: flate2 on zlib-ng, brotli, zstd behind
//! its `Encode` trait) and they are used as they are, except two written here because Pingora
//! lacks them: a zstd decompressor (Pingora only decompresses gzip and br) and a brotli
//! compressor that ends the stream (Pingora's only flushes, leaving a stream without its last
//! meta-block that strict decoders reject).

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::protocols::http::compression::{Algorithm, Encode};
use serde::{Deserialize, Serialize};

/// A content coding Rampart can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Coding {
    #[serde(rename = "gzip")]
    Gzip,
    #[serde(rename = "br")]
    Br,
    #[serde(rename = "zstd")]
    Zstd,
}

impl Coding {
    pub fn token(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Br => "br",
            Coding::Zstd => "zstd",
        }
    }

    /// `x-gzip` is gzip (RFC 9110 section 8.4.1.3).
    pub(super) fn parse(token: &str) -> Option<Self> {
        let t = token.trim();
        if t.eq_ignore_ascii_case("gzip") || t.eq_ignore_ascii_case("x-gzip") {
            Some(Coding::Gzip)
        } else if t.eq_ignore_ascii_case("br") {
            Some(Coding::Br)
        } else if t.eq_ignore_ascii_case("zstd") {
            Some(Coding::Zstd)
        } else {
            None
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }

    pub(super) fn compressor(self, level: u32) -> Option<Box<dyn Encode + Send + Sync>> {
        match self {
            Coding::Br => Some(Box::new(BrotliCompressor::new(level))),
            Coding::Gzip => Algorithm::Gzip.compressor(level),
            Coding::Zstd => Algorithm::Zstd.compressor(level),
        }
    }

    pub(super) fn decompressor(self) -> Option<Box<dyn Encode + Send + Sync>> {
        match self {
            Coding::Gzip => Algorithm::Gzip.decompressor(true),
            Coding::Br => Algorithm::Brotli.decompressor(true),
            Coding::Zstd => ZstdDecompressor::new().map(|d| Box::new(d) as _),
        }
    }
}

/// `body` encoded in one go with the encoder a response would use (self-made responses, and
/// `examples/compress_ratio.rs` which measures ratio and CPU per coding and level).
pub fn encode_once(c: Coding, level: u32, body: &[u8]) -> Option<Bytes> {
    c.compressor(level)?.encode(body, true).ok()
}

/// Brotli compressor that finishes the stream. Written here because Pingora's ends with a
/// flush, which leaves out brotli's final (ISLAST) meta-block; the `brotli` crate is the one
/// Pingora uses. The writer is taken at the end so `into_inner` can close the stream.
struct BrotliCompressor {
    writer: Option<brotli::CompressorWriter<Vec<u8>>>,
    total_in: usize,
    total_out: usize,
    duration: Duration,
}

impl BrotliCompressor {
    fn new(level: u32) -> Self {
        // 4 KiB internal buffer, 2^22 window (brotli's default; Pingora uses 2^19).
        Self {
            writer: Some(brotli::CompressorWriter::new(Vec::new(), 4096, level, 22)),
            total_in: 0,
            total_out: 0,
            duration: Duration::ZERO,
        }
    }
}

impl Encode for BrotliCompressor {
    fn encode(&mut self, input: &[u8], end: bool) -> pingora::Result<Bytes> {
        let start = Instant::now();
        let Some(writer) = self.writer.as_mut() else {
            return Ok(Bytes::new());
        };
        self.total_in += input.len();
        writer
            .write_all(input)
            .map_err(|e| compression_error("brotli", e))?;
        let out = if end {
            self.writer
                .take()
                .map(|w| w.into_inner())
                .unwrap_or_default()
        } else {
            std::mem::take(writer.get_mut())
        };
        self.total_out += out.len();
        self.duration += start.elapsed();
        Ok(out.into())
    }

    fn stat(&self) -> (&'static str, usize, usize, Duration) {
        ("br", self.total_in, self.total_out, self.duration)
    }
}

/// zstd decoder. Written here because Pingora implements decompression for gzip and br only;
/// the `zstd` crate is the one Pingora compresses with. The Mutex (never contended: one
/// request's encoder) only makes the decoder context `Sync`, as Pingora does for its encoder.
struct ZstdDecompressor {
    decoder: std::sync::Mutex<zstd::stream::write::Decoder<'static, Vec<u8>>>,
    total_in: usize,
    total_out: usize,
    duration: Duration,
}

impl ZstdDecompressor {
    fn new() -> Option<Self> {
        Some(Self {
            decoder: std::sync::Mutex::new(zstd::stream::write::Decoder::new(Vec::new()).ok()?),
            total_in: 0,
            total_out: 0,
            duration: Duration::ZERO,
        })
    }
}

impl Encode for ZstdDecompressor {
    fn encode(&mut self, input: &[u8], end: bool) -> pingora::Result<Bytes> {
        let start = Instant::now();
        self.total_in += input.len();
        let decoder = self
            .decoder
            .get_mut()
            .map_err(|_| compression_error("zstd", std::io::Error::other("poisoned")))?;
        decoder
            .write_all(input)
            .map_err(|e| compression_error("zstd", e))?;
        if end {
            decoder.flush().map_err(|e| compression_error("zstd", e))?;
        }
        let out = std::mem::take(decoder.get_mut());
        self.total_out += out.len();
        self.duration += start.elapsed();
        Ok(out.into())
    }

    fn stat(&self) -> (&'static str, usize, usize, Duration) {
        ("de-zstd", self.total_in, self.total_out, self.duration)
    }
}

fn compression_error(what: &str, e: std::io::Error) -> Box<pingora::Error> {
    pingora::Error::because(
        pingora::protocols::http::compression::COMPRESSION_ERROR,
        format!("{what} stream"),
        e,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample() -> Vec<u8> {
        (0..20_000)
            .map(|i| format!("{{\"day\":{i},\"value\":{}}},", i * 37 % 1000))
            .collect::<String>()
            .into_bytes()
    }

    /// Every encoder in streaming use decodes, with the crates clients use, to the input.
    #[test]
    fn streamed_round_trips() {
        let input = sample();
        for c in [Coding::Gzip, Coding::Br, Coding::Zstd] {
            let mut enc = c.compressor(5).expect("compressor");
            let mut out = Vec::new();
            for chunk in input.chunks(7_000) {
                out.extend_from_slice(&enc.encode(chunk, false).expect("encode"));
            }
            out.extend_from_slice(&enc.encode(&[], true).expect("finish"));
            let mut plain = Vec::new();
            match c {
                Coding::Gzip => {
                    flate2::read::GzDecoder::new(&out[..])
                        .read_to_end(&mut plain)
                        .expect("gunzip");
                }
                Coding::Br => {
                    brotli::Decompressor::new(&out[..], 4096)
                        .read_to_end(&mut plain)
                        .expect("brotli stream complete");
                }
                Coding::Zstd => plain = zstd::stream::decode_all(&out[..]).expect("unzstd"),
            }
            assert_eq!(plain, input, "{c:?}");
            assert!(out.len() * 5 < input.len(), "{c:?} compresses this JSON 5x");
            // and the decompressors undo them, chunk by chunk
            let mut dec = c.decompressor().expect("decompressor");
            let mut back = Vec::new();
            for chunk in out.chunks(1000) {
                back.extend_from_slice(&dec.encode(chunk, false).expect("decode"));
            }
            back.extend_from_slice(&dec.encode(&[], true).expect("decode end"));
            assert_eq!(back, input, "{c:?} decompressor");
        }
    }

    /// Why [`BrotliCompressor`] exists: Pingora's brotli output decodes, but the stream never
    /// ends, so strict decoders report an error. When Pingora fixes it this fails: use theirs.
    #[test]
    fn pingora_brotli_stream_is_unterminated() {
        let input = sample();
        let mut enc = Algorithm::Brotli.compressor(4).expect("compressor");
        let mut out = enc.encode(&input, false).expect("encode").to_vec();
        out.extend_from_slice(&enc.encode(&[], true).expect("finish"));
        let mut plain = Vec::new();
        let result = brotli::Decompressor::new(&out[..], 4096).read_to_end(&mut plain);
        assert!(result.is_err(), "Pingora's brotli stream now ends properly");
        assert_eq!(plain, input);
    }
}
