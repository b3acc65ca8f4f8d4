//! Benchmark: `aion-reconcile graph` of a services.yml with 1,000 microservices (issue 17's
//! goal: under 1 s), beside Graphviz's `dot` laying out the same graph from our DOT output.
//!
//! The file: 1,000 microservices in chains of 10 (each links to the next on key `default`, every
//! third also on a second key with `pattern: "0"`), every 25th sends to a microservice on one of
//! four other devices (`device:`), startup/always mixed, scale 1–3. Each run is a fresh process:
//! ours renders SVG with its own layered layout (no Graphviz), the peer is `dot -Tsvg` on the
//! DOT text `aion-reconcile graph --format dot` printed for the same file (so the peer does the
//! layout only, not the parsing or validation).
//!
//! ```sh
//! cargo build --release -p aion-reconcile -p aion-bench
//! target/release/graph_bench [--count 1000] [--runs 5] [--bin target/release/aion-reconcile]
//! ```

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

fn services_yml(count: usize) -> String {
    let mut s = String::from("microservices:\n");
    for i in 0..count {
        let name = format!("ms-{i:04}");
        let _ = writeln!(s, "  {name}:");
        let _ = writeln!(s, "    command: [\"python3\", \"main.py\"]");
        let _ = writeln!(s, "    scale: {}", 1 + i % 3);
        let _ = writeln!(s, "    startup: {}", if i % 10 == 0 { "yes" } else { "no" });
        let _ = writeln!(s, "    always: {}", if i % 4 == 0 { "no" } else { "yes" });
        let in_chain = i % 10 != 9 && i + 1 < count;
        let remote = i % 25 == 24;
        if in_chain || remote {
            let _ = writeln!(s, "    nextService:");
            let _ = writeln!(s, "      default:");
            if in_chain {
                let _ = writeln!(s, "        - name: ms-{:04}", i + 1);
            }
            if remote {
                let _ = writeln!(s, "        - name: ms-{:04}", (i + 7) % count);
                let _ = writeln!(s, "          device: edge-{}", i % 4);
            }
            if in_chain && i % 3 == 0 {
                let _ = writeln!(s, "      second:");
                let _ = writeln!(s, "        - name: ms-{:04}", i + 1);
                let _ = writeln!(s, "          pattern: \"0\"");
            }
        }
    }
    s.push_str("devices:\n");
    for d in 0..4 {
        let _ = writeln!(s, "  edge-{d}:\n    addr: 10.0.0.{}\n", 10 + d);
    }
    s
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(cmd: &mut Command) -> anyhow::Result<(f64, Vec<u8>)> {
    let t = Instant::now();
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((secs, out.stdout))
}

fn main() -> anyhow::Result<()> {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let mut count = 1000;
    let mut runs = 5;
    let mut bin = PathBuf::from(target).join("release/aion-reconcile");
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--count" => count = v()?.parse()?,
            "--runs" => runs = v()?.parse()?,
            "--bin" => bin = PathBuf::from(v()?),
            other => bail!("unknown argument {other}"),
        }
    }
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("services.yml");
    std::fs::write(&file, services_yml(count))?;
    let dot_file = dir.path().join("graph.dot");
    let out = Command::new(&bin)
        .args(["graph", "--format", "dot"])
        .arg(&file)
        .output()
        .with_context(|| format!("run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "graph --format dot: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(&dot_file, &out.stdout)?;
    let peer = Command::new("dot").arg("-V").output().is_ok();
    println!(
        "{count} microservices ({} bytes of services.yml, {} bytes of DOT); {runs} runs each",
        std::fs::metadata(&file)?.len(),
        out.stdout.len()
    );
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let (mut ours_svg, mut theirs_bytes) = (Vec::new(), 0);
    for _ in 0..runs {
        let (t, n) = time(
            Command::new(&bin)
                .args(["graph", "--format", "svg"])
                .arg(&file),
        )?;
        ours.push(t);
        ours_svg = n;
        if peer {
            let (t, n) = time(Command::new("dot").arg("-Tsvg").arg(&dot_file))?;
            theirs.push(t);
            theirs_bytes = n.len();
        }
    }
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|t| format!("{t:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // The figure is for a whole drawing: every microservice is in it.
    let svg = String::from_utf8_lossy(&ours_svg);
    let missing: Vec<String> = (0..count)
        .map(|i| format!("ms-{i:04}"))
        .filter(|n| !svg.contains(n.as_str()))
        .collect();
    if !missing.is_empty() {
        bail!(
            "the SVG misses {} microservices: {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
    let ours_bytes = ours_svg.len();
    println!("| tool | runs (s) | median (s) | SVG bytes |");
    println!("|---|---|---:|---:|");
    let ours_median = median(ours.clone());
    println!(
        "| aion-reconcile graph (parse + validate + layout + SVG) | {} | {ours_median:.3} | {ours_bytes} |",
        fmt(&ours)
    );
    if peer {
        let m = median(theirs.clone());
        println!(
            "| Graphviz dot -Tsvg (layout + SVG of our DOT) | {} | {m:.3} | {theirs_bytes} |",
            fmt(&theirs)
        );
        println!("dot / ours (median wall): {:.1}x", m / ours_median);
    } else {
        println!("(Graphviz `dot` not installed: no peer figure)");
    }
    Ok(())
}
