//! Codecs: the content codings Rampart produces and decodes, on Pingora's encoders.
//!
//! Pingora ships the encoders (`Algorithm::compressor`: flate2 on zlib-ng, brotli, zstd behind
//! its `Encode` trait) and they are used as they are, except three written here because Pingora
//! lacks them: a zstd decompressor (Pingora only decompresses gzip and br), a brotli
//! compressor that ends the stream (Pingora's only flushes, leaving a stream without its last
//! meta-block that strict decoders reject), and gzip of a whole body by libdeflate.
//!
//! Why libdeflate: at the same level it compresses better than zlib (nginx) and faster than
//! zlib-ng (BENCHMARKS.md: the bench's 39 KB JSON at level 6 is 9,642 B in 0.43 ms, against
//! nginx's 10,086 B and zlib-ng's 10,230 B in 0.66 ms). It only encodes a whole buffer, so it
//! takes bodies whose `Content-Length` is known and at most [`WHOLE_GZIP_MAX`]; those arrive
//! in full without waiting on anything but the upstream. Others stream through zlib-ng.

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

    /// The encoder for a body of `length` bytes when the header says (`None`: unknown).
    pub(super) fn compressor(
        self,
        level: u32,
        length: Option<u64>,
    ) -> Option<Box<dyn Encode + Send + Sync>> {
        match self {
            Coding::Br => Some(Box::new(BrotliCompressor::new(level))),
            Coding::Gzip => match length {
                Some(n) if n <= WHOLE_GZIP_MAX as u64 => {
                    Some(Box::new(WholeGzip::new(level, n as usize)))
                }
                _ => Algorithm::Gzip.compressor(level),
            },
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
    let length = u64::try_from(body.len()).ok();
    c.compressor(level, length)?.encode(body, true).ok()
}

/// The longest body gzipped whole. Holding it costs about what a streaming zlib-ng encoder
/// allocates for its own state (window, hash chains and pending output: a few hundred KiB at
/// level 6), so memory per response stays of the order it was.
pub const WHOLE_GZIP_MAX: usize = 256 * 1024;

/// gzip of a body collected whole, then encoded in one pass by libdeflate. Should more than
/// [`WHOLE_GZIP_MAX`] arrive (a length the header understated), what is held goes to a
/// streaming zlib-ng encoder and the rest streams, so the memory bound holds whatever comes.
struct WholeGzip {
    level: u32,
    body: Vec<u8>,
    stream: Option<Box<dyn Encode + Send + Sync>>,
    total_out: usize,
    duration: Duration,
}

impl WholeGzip {
    fn new(level: u32, length: usize) -> Self {
        Self {
            level,
            body: Vec::with_capacity(length),
            stream: None,
            total_out: 0,
            duration: Duration::ZERO,
        }
    }

    /// Hand what is held to zlib-ng and stream from now on.
    fn stream(&mut self, input: &[u8], end: bool) -> pingora::Result<Bytes> {
        let held = std::mem::take(&mut self.body);
        let mut stream = Algorithm::Gzip
            .compressor(self.level)
            .ok_or_else(|| compression_error("gzip", std::io::Error::other("no encoder")))?;
        let mut out = stream.encode(&held, false)?.to_vec();
        out.extend_from_slice(&stream.encode(input, end)?);
        self.stream = Some(stream);
        Ok(out.into())
    }
}

impl Encode for WholeGzip {
    fn encode(&mut self, input: &[u8], end: bool) -> pingora::Result<Bytes> {
        if let Some(stream) = self.stream.as_mut() {
            return stream.encode(input, end);
        }
        if self.body.len() + input.len() > WHOLE_GZIP_MAX {
            return self.stream(input, end);
        }
        self.body.extend_from_slice(input);
        if !end {
            return Ok(Bytes::new());
        }
        let start = Instant::now();
        let out = gzip_whole(self.level, &self.body)?;
        self.total_out = out.len();
        self.duration = start.elapsed();
        Ok(out)
    }

    fn stat(&self) -> (&'static str, usize, usize, Duration) {
        match &self.stream {
            Some(stream) => stream.stat(),
            None => ("gzip", self.body.len(), self.total_out, self.duration),
        }
    }
}

/// `body` gzipped in one pass. libdeflate's levels run 0-12; Rampart's gzip levels (1-9) mean
/// the same effort as zlib's.
fn gzip_whole(level: u32, body: &[u8]) -> pingora::Result<Bytes> {
    // libdeflater's errors (a level out of range, an output buffer too small) are plain enums.
    let failed = |e: &dyn std::fmt::Debug| {
        compression_error("gzip", std::io::Error::other(format!("{e:?}")))
    };
    let level = libdeflater::CompressionLvl::new(level as i32).map_err(|e| failed(&e))?;
    WORKSPACE.with_borrow_mut(|workspace| {
        let (encoder, out) = workspace.for_level(level, body.len());
        let len = encoder.gzip_compress(body, out).map_err(|e| failed(&e))?;
        // Copied out at its own length: the workspace stays for the thread's next body.
        Ok(Bytes::copy_from_slice(out.get(..len).unwrap_or_default()))
    })
}

thread_local! {
    /// Each worker thread's gzip state, kept between bodies.
    static WORKSPACE: std::cell::RefCell<Workspace> = const {
        std::cell::RefCell::new(Workspace { encoder: None, out: Vec::new() })
    };
}

/// A libdeflate compressor and an output buffer, reused: a compressor at level 6 is a few
/// hundred KiB of match-finder tables and the buffer is about the body's size, so allocating
/// both per response made each gzipped response two large allocations (and, with 64
/// connections, a higher peak of resident memory). At most [`WHOLE_GZIP_MAX`] of output
/// bound per thread is kept.
struct Workspace {
    encoder: Option<(libdeflater::CompressionLvl, libdeflater::Compressor)>,
    out: Vec<u8>,
}

impl Workspace {
    /// The compressor for `level` and a buffer that holds gzip of `len` input bytes.
    fn for_level(
        &mut self,
        level: libdeflater::CompressionLvl,
        len: usize,
    ) -> (&mut libdeflater::Compressor, &mut [u8]) {
        if self.encoder.as_ref().is_none_or(|(kept, _)| *kept != level) {
            self.encoder = None;
        }
        let (_, encoder) = self
            .encoder
            .get_or_insert_with(|| (level, libdeflater::Compressor::new(level)));
        let bound = encoder.gzip_compress_bound(len);
        if self.out.len() < bound {
            self.out.resize(bound, 0);
        }
        (encoder, &mut self.out[..bound])
    }
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

    /// About 190 KB of JSON: under [`WHOLE_GZIP_MAX`].
    fn sample() -> Vec<u8> {
        (0..8_000)
            .map(|i| format!("{{\"day\":{i},\"value\":{}}},", i * 37 % 1000))
            .collect::<String>()
            .into_bytes()
    }

    /// `input` through `enc` in chunks of `size`.
    fn encode_chunks(enc: &mut dyn Encode, input: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in input.chunks(size) {
            out.extend_from_slice(&enc.encode(chunk, false).expect("encode"));
        }
        out.extend_from_slice(&enc.encode(&[], true).expect("finish"));
        out
    }

    fn gunzip(gz: &[u8]) -> Vec<u8> {
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut plain)
            .expect("gunzip");
        plain
    }

    /// Every encoder, whether the length is known or not, decodes with the crates clients
    /// use to the input.
    #[test]
    fn streamed_round_trips() {
        let input = sample();
        let known = Some(input.len() as u64);
        for (c, length) in [
            (Coding::Gzip, None),
            (Coding::Gzip, known),
            (Coding::Br, known),
            (Coding::Zstd, known),
        ] {
            let mut enc = c.compressor(5, length).expect("compressor");
            let out = encode_chunks(enc.as_mut(), &input, 7_000);
            let mut plain = Vec::new();
            match c {
                Coding::Gzip => plain = gunzip(&out),
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

    /// A body gzipped whole comes out only at its end, and smaller than zlib-ng makes it at
    /// the same level (why libdeflate is used).
    #[test]
    fn whole_gzip_waits_for_the_end_and_beats_zlib_ng() {
        let input = sample();
        let mut whole = Coding::Gzip
            .compressor(6, Some(input.len() as u64))
            .expect("compressor");
        for chunk in input.chunks(7_000) {
            assert!(whole.encode(chunk, false).expect("encode").is_empty());
        }
        let out = whole.encode(&[], true).expect("finish");
        assert_eq!(gunzip(&out), input);
        let mut zlib_ng = Coding::Gzip.compressor(6, None).expect("compressor");
        let streamed = encode_chunks(zlib_ng.as_mut(), &input, 7_000);
        assert!(
            out.len() < streamed.len(),
            "libdeflate {} B, zlib-ng {} B",
            out.len(),
            streamed.len()
        );
    }

    /// A body longer than its header said, past the whole-body limit: what was held and the
    /// rest stream through zlib-ng, and the output is still one valid gzip stream.
    #[test]
    fn whole_gzip_streams_a_body_longer_than_the_limit() {
        let mut input = Vec::new();
        while input.len() <= WHOLE_GZIP_MAX + 50_000 {
            input.extend_from_slice(&sample());
        }
        let mut enc = Coding::Gzip.compressor(6, Some(1000)).expect("compressor");
        let mut out = Vec::new();
        let mut streamed_before_end = false;
        for chunk in input.chunks(16_384) {
            let part = enc.encode(chunk, false).expect("encode");
            streamed_before_end |= !part.is_empty();
            out.extend_from_slice(&part);
        }
        out.extend_from_slice(&enc.encode(&[], true).expect("finish"));
        assert!(streamed_before_end, "output began before the end");
        assert_eq!(gunzip(&out), input);
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
