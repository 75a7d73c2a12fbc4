//! The fuzz targets of `fuzz/` on stable Rust: every input in `fuzz/corpus/<target>/` (the
//! inputs of crashes found so far among them), then random mutations of those seeds for a
//! bounded time per target: `RAMPART_FUZZ_SECS` (default 1; CI gives each a few seconds).
//! cargo-fuzz runs the same bodies coverage-guided and much longer (see fuzz/README.md).
//! A failing input is written to `target/fuzz-failures/` for `cargo fuzz run <target> <file>`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod targets;

/// Bytes that matter to the parsers under test, spliced into mutated inputs.
const TOKENS: [&[u8]; 24] = [
    b"%",
    b"%2f",
    b"%2e",
    b"%00",
    b"%41",
    b"..",
    b"/",
    b"//",
    b"\r\n",
    b"\n",
    b"\r\n\r\n",
    b",",
    b";q=",
    b"q=0.5",
    b"=",
    b":",
    b"[",
    b"]",
    b" ",
    b"\t",
    b"chunked",
    b"\xff",
    b"0\r\n",
    b"\"",
];
const MAX_LEN: usize = 4096;

/// xorshift64*: enough randomness for mutation, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    for _ in 0..=rng.below(4) {
        let at = rng.below(input.len() + 1);
        match rng.below(7) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
            1 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] = rng.next() as u8;
            }
            2 => input.insert(at, rng.next() as u8),
            3 if !input.is_empty() => {
                let end = (at + rng.below(16)).min(input.len());
                input.drain(at.min(end)..end);
            }
            4 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                input.splice(at..at, token.iter().copied());
            }
            5 if !seeds.is_empty() => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len());
                let to = (from + rng.below(64)).min(other.len());
                input.splice(at..at, other[from..to].iter().copied());
            }
            _ if input.len() > 1 => {
                let from = rng.below(input.len());
                let to = (from + rng.below(32)).min(input.len());
                let piece: Vec<u8> = input[from..to].to_vec();
                input.splice(at..at, piece);
            }
            _ => input.push(rng.next() as u8),
        }
    }
    input.truncate(MAX_LEN);
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read(f).expect("seed"))
        .collect()
}

/// Run `body` on `input`; on a panic, keep the input and fail naming it.
fn run(target: &str, body: fn(&[u8]), input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| body(input))).is_err() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join(format!("{target}-{:016x}", fingerprint(input)));
        let _ = std::fs::write(&file, input);
        panic!(
            "fuzz target {target} failed on {:?} (saved as {})",
            String::from_utf8_lossy(input),
            file.display()
        );
    }
}

fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[test]
fn fuzz_targets_hold_on_their_corpus_and_mutations() {
    let secs: u64 = std::env::var("RAMPART_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut report = Vec::new();
    for (name, body) in targets::TARGETS {
        let seeds = corpus(name);
        assert!(!seeds.is_empty(), "fuzz/corpus/{name} has no seeds");
        for seed in &seeds {
            run(name, body, seed);
        }
        let mut rng = Rng(fingerprint(name.as_bytes()) | 1);
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut runs = 0u64;
        while Instant::now() < deadline && runs < 5_000_000 {
            let mut input = seeds[rng.below(seeds.len())].clone();
            mutate(&mut rng, &mut input, &seeds);
            run(name, body, &input);
            runs += 1;
        }
        report.push(format!("{name}: {} seeds, {runs} mutations", seeds.len()));
    }
    println!("{}", report.join("\n"));
}
