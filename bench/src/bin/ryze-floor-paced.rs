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
//! ```text
//! ryze-floor-paced serve N ROUNDS BYTES GAP_MS   prints the port, then one JSON line
//! ryze-floor-paced drain PORT N                  reads until every socket is closed
//! ```
//! Loopback only, bounded: the writer stops after ROUNDS, the drain after 300 s.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

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
        Some("drain") => drain(num(1)? as u16, num(2)? as usize),
        _ => anyhow::bail!("usage: ryze-floor-paced serve N ROUNDS BYTES GAP_MS | drain PORT N"),
    }
}

fn serve(n: usize, rounds: u64, bytes: usize, gap_ms: u64) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    let mut socks: Vec<TcpStream> = (0..n)
        .map(|_| listener.accept().map(|(s, _)| s))
        .collect::<Result<_, _>>()?;
    for s in &socks {
        s.set_nodelay(true)?;
    }
    // One text frame as the gateway sends it: 0x81, 16-bit length, payload.
    let mut frame = vec![0x81u8, 126, (bytes >> 8) as u8, bytes as u8];
    frame.resize(4 + bytes, b'x');
    let pid = std::process::id();
    let c0 = ryze_bench::procfs::cpu_seconds(pid);
    let t0 = Instant::now();
    for _ in 0..rounds {
        for s in socks.iter_mut() {
            s.write_all(&frame)?;
        }
        // The pacing is the point: the gap between events of the sparse scenarios.
        std::thread::sleep(Duration::from_millis(gap_ms));
    }
    let cpu_s = ryze_bench::procfs::cpu_seconds(pid) - c0;
    let frames = rounds * n as u64;
    println!(
        "{}",
        serde_json::json!({
            "n": n, "frames": frames, "bytes": bytes, "gap_ms": gap_ms, "cpu_s": cpu_s,
            "wall_s": t0.elapsed().as_secs_f64(),
            "cpu_ms_per_1k_deliveries": cpu_s * 1e6 / frames.max(1) as f64,
        })
    );
    Ok(())
}

fn drain(port: u16, n: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut readers = Vec::with_capacity(n);
        for _ in 0..n {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            readers.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while matches!(s.read(&mut buf).await, Ok(k) if k > 0) {}
            }));
        }
        let all = futures_util::future::join_all(readers);
        tokio::time::timeout(Duration::from_secs(300), all).await?;
        Ok(())
    })
}
