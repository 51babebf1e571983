//! `ryze-bench`: the orchestrator of `make bench` / `make bench-quick`.
//!
//! Starts a private Postgres and Redis, two gateways and a publisher (the binaries in
//! `$RYZE_BIN_DIR`, release builds from scripts/bench.sh), runs the scenarios one after the
//! other with `ryze-load` workers as clients, and writes the results: Markdown into the
//! generated block of `--doc` (docs/benchmarks.md) and every raw number into `--json`.
//! Everything runs on this machine over loopback, each phase bounded in time and count.
//!
//! ```text
//! ryze-bench [--quick | --tiny]
//!            [--only idle,sparse,sparse_many,fanout,fanout_history,resume,fanout_sweep,hot,
//!                    many,media,storm_hot,storm_many,regions]
//!            [--doc docs/benchmarks.md] [--json target/bench.json] [--perf DIR]
//!            [--command "make bench"]
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ryze_bench::report::{self, RunInfo};
use ryze_bench::scenarios::storm::Population;
use ryze_bench::scenarios::{history, idle, regions, sparse, storm, stream, Outcome, Params};
use ryze_bench::system::{System, RATE_LIMIT};
use ryze_bench::{procfs, profile};

const SCENARIOS: [&str; 14] = [
    "idle",
    "sparse",
    "sparse_many",
    "saturated",
    "fanout",
    "fanout_history",
    "resume",
    "fanout_sweep",
    "hot",
    "many",
    "media",
    "storm_hot",
    "storm_many",
    "regions",
];

struct Args {
    quick: bool,
    tiny: bool,
    only: Vec<String>,
    doc: Option<PathBuf>,
    json: Option<PathBuf>,
    perf: Option<String>,
    command: String,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        quick: false,
        tiny: false,
        only: SCENARIOS.iter().map(|s| (*s).to_owned()).collect(),
        doc: None,
        json: None,
        perf: None,
        command: "ryze-bench".to_owned(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--quick" => args.quick = true,
            "--tiny" => args.tiny = true,
            "--only" => {
                let list = it.next().context("--only needs a list")?;
                args.only = list.split(',').map(|s| s.trim().to_owned()).collect();
                if let Some(bad) = args.only.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
                    bail!("unknown scenario {bad}; known: {}", SCENARIOS.join(","));
                }
            }
            "--doc" => args.doc = Some(it.next().context("--doc needs a path")?.into()),
            "--json" => args.json = Some(it.next().context("--json needs a path")?.into()),
            "--perf" => args.perf = Some(it.next().context("--perf needs a directory")?),
            "--command" => args.command = it.next().context("--command needs text")?,
            "-h" | "--help" => {
                println!(
                    "ryze-bench [--quick | --tiny] [--only {}] [--doc PATH] [--json PATH] [--perf DIR] [--command TEXT]",
                    SCENARIOS.join(",")
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let mut p = if args.tiny {
        Params::tiny()
    } else if args.quick {
        Params::quick()
    } else {
        Params::full()
    };
    if let Some(dir) = &args.perf {
        if profile::available() {
            p.perf_dir = Some(dir.clone());
        } else {
            eprintln!("ryze-bench: perf cannot sample here; running without profiles");
        }
    }
    let settings = [
        ("RATE_LIMIT_PER_MINUTE", RATE_LIMIT),
        ("RUST_LOG", ryze_tests::QUIET_LOG),
    ];
    let mut info = RunInfo::collect(p.mode, &settings);
    if let Some((soft, hard)) = procfs::open_files_limit("self") {
        if soft < hard {
            eprintln!(
                "ryze-bench: open files soft limit {soft} < hard {hard}; run `ulimit -n {hard}` \
                 first (scripts/bench.sh does) or the large steps will be cut short"
            );
        }
    }
    let started = Instant::now();
    let log = |what: &str| eprintln!("[bench {:>5.1}s] {what}", started.elapsed().as_secs_f64());
    log(&format!(
        "{} run; load average {:.2}; starting postgres, redis, 2 gateways, publisher",
        p.mode, info.load_before
    ));
    let many = p.many.max(p.storm_clients);
    let mut sys = System::start(many).await.context("starting the system")?;
    log("system ready");

    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut first = true;
    for name in SCENARIOS {
        if !args.only.iter().any(|s| s == name) {
            continue;
        }
        if !first {
            // Fresh gateways: no scenario inherits another's RSS, CPU or caches.
            sys.restart_gateways().await?;
        }
        first = false;
        log(&format!("scenario {name}"));
        let result = match name {
            "idle" => idle::run(&sys, &p).await,
            "sparse" => sparse::one(&sys, &p).await,
            "sparse_many" => sparse::many(&sys, &p).await,
            "saturated" => sparse::saturated(&sys, &p).await,
            "fanout" => stream::fanout(&sys, &p).await,
            "fanout_history" => history::fanout_history(&mut sys, &p).await,
            "resume" => history::resume(&mut sys, &p).await,
            "fanout_sweep" => stream::fanout_sweep(&sys, &p).await,
            "hot" => stream::hot(&sys, &p).await,
            "many" => stream::many(&sys, &p).await,
            "media" => stream::media(&sys, &p).await,
            "storm_hot" => storm::run(&mut sys, &p, Population::OneInstance).await,
            "storm_many" => storm::run(&mut sys, &p, Population::ManyInstances).await,
            "regions" => regions::run(&sys, &p).await,
            _ => continue,
        };
        let outcome = match result {
            Ok(o) => o,
            Err(e) => {
                log(&format!("scenario {name} failed: {e:#}"));
                let mut o = Outcome::new(name, &format!("{name} (failed)"));
                o.note(format!("the scenario failed: {e:#}"));
                // A storm that failed midway may have left gateway A dead.
                for i in 0..sys.gateways.len() {
                    if !ryze_tests::pid_is_alive(sys.gateways[i].pid()) {
                        sys.replace_gateway(i).await?;
                    }
                }
                o
            }
        };
        for (k, v) in &outcome.rows {
            eprintln!("    {k}: {v}");
        }
        for n in &outcome.notes {
            eprintln!("    note: {n}");
        }
        outcomes.push(outcome);
        // Let sockets close and caches expire before the next scenario.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    info.seconds = started.elapsed().as_secs_f64();
    info.load_after = procfs::load_average();
    log("done");

    let md = report::markdown(&info, &outcomes, &args.command);
    if let Some(path) = &args.json {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).ok();
        }
        let json = serde_json::json!({ "run": info, "params": p, "scenarios": outcomes });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
        log(&format!("raw numbers in {}", path.display()));
    }
    match &args.doc {
        Some(doc) => {
            report::splice(doc, &md)?;
            log(&format!("results written to {}", doc.display()));
        }
        None => println!("{md}"),
    }
    Ok(())
}
