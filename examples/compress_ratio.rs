//! Ratio and CPU cost of each coding and level on given files, through the same encoders the
//! proxy uses (`rampart::compress::encode_once`). Single-threaded, one body at a time:
//!
//!     cargo run --release --example compress_ratio -- FILE...
//!
//! Prints, per file and setting: compressed size, ratio (original / compressed), and the
//! median time of one encode over 30 runs (CPU cost per response).

use std::time::Instant;

use rampart::compress::{encode_once, Coding};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let settings: &[(Coding, u32)] = &[
        (Coding::Gzip, 1),
        (Coding::Gzip, 5),
        (Coding::Gzip, 6),
        (Coding::Gzip, 7),
        (Coding::Gzip, 9),
        (Coding::Br, 1),
        (Coding::Br, 4),
        (Coding::Br, 5),
        (Coding::Br, 6),
        (Coding::Zstd, 1),
        (Coding::Zstd, 3),
        (Coding::Zstd, 4),
        (Coding::Zstd, 5),
        (Coding::Zstd, 6),
        (Coding::Zstd, 7),
        (Coding::Zstd, 9),
    ];
    for path in std::env::args().skip(1) {
        let data = std::fs::read(&path)?;
        println!("{path}: {} bytes", data.len());
        println!("  coding level   bytes  ratio  median_us  MB/s");
        for &(coding, level) in settings {
            let mut times = Vec::with_capacity(30);
            let mut size = 0;
            for _ in 0..30 {
                let start = Instant::now();
                let out = encode_once(coding, level, &data).ok_or("encoder failed")?;
                times.push(start.elapsed());
                size = out.len();
            }
            times.sort();
            let median = times[times.len() / 2];
            println!(
                "  {:<6} {:>5} {:>7} {:>6.2} {:>10.0} {:>5.0}",
                coding.token(),
                level,
                size,
                data.len() as f64 / size as f64,
                median.as_secs_f64() * 1e6,
                data.len() as f64 / median.as_secs_f64() / 1e6,
            );
        }
    }
    Ok(())
}
