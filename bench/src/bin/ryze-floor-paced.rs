//! The kernel floor at the sparse scenarios' pace, read by clients that sleep.
//!
//! Like `../shared/tools/floor` (one ready-made frame per write to each of N loopback
//! sockets, nothing else in user space, CPU time per 1,000 frames), with two differences
//! that every gateway meets at the everyday load: one round of writes every `GAP_MS`
//! instead of back to back (caches go cold in between), and readers that wait in epoll
//! (a tokio runtime, like `ryze-load` and real clients) instead of busy-polling, so each
//! frame wakes its reader. `ryze-bench` prints it beside the floor: the difference is
//! kernel work no gateway can avoid (docs/benchmarks.md).
//!
//! Each frame carries its round's scheduled start as a `"sentMicros":` stamp, and the drain
//! reports stamp → receive percentiles: the latency of the writes alone, the lower bound of a
//! gateway's publish → receive latency for the same deliveries on the same core. Rounds start
//! on the wall clock's `GAP_MS` grid, so several writers started together (the scenario's two
//! gateways) write each round at the same moment, as gateways receive an event at once.
//!
//! ```text
//! ryze-floor-paced serve N ROUNDS BYTES GAP_MS   prints the port, then one JSON line (CPU
//!                                                per 1,000 frames; round start → last write
//!                                                done, p50 and p99)
//! ryze-floor-paced drain N PORT [PORT ...]       N readers per port; reads until every
//!                                                socket is closed, then one JSON line
//! ```
//! Loopback only, bounded: the writer stops after ROUNDS, the drain after 300 s.

use std::cell::RefCell;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

use ryze_bench::histogram::Histogram;
use ryze_bench::protocol::{now_micros, sent_micros};
use tokio::io::{AsyncReadExt, BufReader};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| -> anyhow::Result<u64> {
        args.get(i)
            .ok_or_else(|| anyhow::anyhow!("missing argument {i}"))?
            .parse()
            .map_err(|e| anyhow::anyhow!("argument {i}: {e}"))
    };
    match args.first().map(String::as_str) {
        Some("serve") => serve(num(1)? as usize, num(2)?, num(3)? as usize, num(4)?),
        Some("drain") => {
            let ports = (2..args.len().max(3))
                .map(|i| num(i).map(|p| p as u16))
                .collect::<anyhow::Result<Vec<_>>>()?;
            drain(num(1)? as usize, &ports)
        }
        _ => anyhow::bail!(
            "usage: ryze-floor-paced serve N ROUNDS BYTES GAP_MS | drain N PORT [PORT ...]"
        ),
    }
}

/// The stamp's prefix in the payload; the 16 digits after it are the round's start.
const STAMP_KEY: &str = r#"{"sentMicros":"#;
/// Where those digits sit in the frame: after the 4-byte header and the key.
const STAMP_AT: usize = 4 + STAMP_KEY.len();

/// One text frame as the gateway sends it (0x81, 16-bit length, payload) with `bytes` bytes
/// of payload (at least 40): `{"sentMicros":0000000000000000,"pad":"xx…"}`.
fn frame(bytes: usize) -> Vec<u8> {
    let mut f = vec![0x81u8, 126, 0, 0];
    f.extend_from_slice(format!(r#"{STAMP_KEY}{:016},"pad":""#, 0).as_bytes());
    let pad = (4 + bytes).saturating_sub(f.len() + 2);
    f.resize(f.len() + pad, b'x');
    f.extend_from_slice(b"\"}");
    let len = f.len() - 4;
    f[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    f
}

/// Writes `micros` as the frame's stamp: always 16 digits (until the year 2286), so the
/// frame keeps its length.
fn stamp(frame: &mut [u8], micros: u64) {
    frame[STAMP_AT..STAMP_AT + 16].copy_from_slice(format!("{micros:016}").as_bytes());
}

fn serve(n: usize, rounds: u64, bytes: usize, gap_ms: u64) -> anyhow::Result<()> {
    anyhow::ensure!(gap_ms > 0, "GAP_MS must be at least 1");
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    let mut socks: Vec<TcpStream> = (0..n)
        .map(|_| listener.accept().map(|(s, _)| s))
        .collect::<Result<_, _>>()?;
    for s in &socks {
        s.set_nodelay(true)?;
    }
    let gap_us = gap_ms * 1000;
    let mut frame = frame(bytes);
    let pid = std::process::id();
    let c0 = ryze_bench::procfs::cpu_seconds(pid);
    let t0 = Instant::now();
    // Round start → last write done: the writer's side alone, whatever the readers do.
    let mut spans = Histogram::default();
    for _ in 0..rounds {
        // The pacing is the point: the gap between events of the sparse scenarios. The next
        // round starts on the wall clock's grid, so writers started together stay in step.
        let start = (now_micros() / gap_us + 1) * gap_us;
        std::thread::sleep(Duration::from_micros(start.saturating_sub(now_micros())));
        stamp(&mut frame, start);
        for s in socks.iter_mut() {
            s.write_all(&frame)?;
        }
        spans.record(now_micros().saturating_sub(start));
    }
    let cpu_s = ryze_bench::procfs::cpu_seconds(pid) - c0;
    let frames = rounds * n as u64;
    println!(
        "{}",
        serde_json::json!({
            "n": n, "frames": frames, "bytes": bytes, "gap_ms": gap_ms, "cpu_s": cpu_s,
            "wall_s": t0.elapsed().as_secs_f64(),
            "cpu_ms_per_1k_deliveries": cpu_s * 1e6 / frames.max(1) as f64,
            "round_p50_us": spans.quantile(0.5), "round_p99_us": spans.quantile(0.99),
        })
    );
    Ok(())
}

fn drain(n: usize, ports: &[u16]) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let latency = Rc::new(RefCell::new(Histogram::default()));
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let mut readers = Vec::with_capacity(n * ports.len());
        for &port in ports {
            for _ in 0..n {
                let s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                let latency = latency.clone();
                readers.push(tokio::task::spawn_local(read_frames(s, latency)));
            }
        }
        let all = futures_util::future::join_all(readers);
        tokio::time::timeout(Duration::from_secs(300), all).await?;
        anyhow::Ok(())
    })?;
    let h = latency.borrow();
    println!(
        "{}",
        serde_json::json!({
            "frames": h.count(), "p50_us": h.quantile(0.5), "p99_us": h.quantile(0.99),
            "max_us": h.max(),
        })
    );
    Ok(())
}

/// Reads whole frames until the writer closes, recording each one's stamp → receive time.
async fn read_frames(s: tokio::net::TcpStream, latency: Rc<RefCell<Histogram>>) {
    let mut s = BufReader::with_capacity(16 * 1024, s);
    let mut head = [0u8; 4];
    let mut payload = Vec::new();
    while s.read_exact(&mut head).await.is_ok() {
        payload.resize(usize::from(u16::from_be_bytes([head[2], head[3]])), 0);
        if s.read_exact(&mut payload).await.is_err() {
            break;
        }
        let now = now_micros();
        let stamp = std::str::from_utf8(&payload).ok().and_then(sent_micros);
        if let Some(sent) = stamp {
            latency.borrow_mut().record(now.saturating_sub(sent));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_asked_size_and_a_stamp_in_place() {
        let mut f = frame(443);
        assert_eq!(f.len(), 4 + 443);
        assert_eq!(u16::from_be_bytes([f[2], f[3]]), 443);
        stamp(&mut f, 1_765_000_000_000_000);
        assert_eq!(f.len(), 4 + 443);
        let text = std::str::from_utf8(&f[4..]).unwrap();
        assert_eq!(sent_micros(text), Some(1_765_000_000_000_000));
        assert!(text.ends_with("x\"}"));
    }
}
