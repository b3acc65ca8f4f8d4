//! Cluster benchmark: render, diff and no-change apply of 1,000 microservices across 3 nodes,
//! ours side by side with `kubectl diff --server-side` and `kubectl apply --server-side` on the
//! same rendered files, against the real kube-apiserver of `scripts/k8s-testenv.sh`; then
//! `rollback` after a version bump of one and of every microservice, and `history`.
//!
//! Usage (release build):
//!   eval "$(scripts/k8s-testenv.sh env)"
//!   cargo build --release -p aion-reconcile -p aion-bench --bin aion-reconcile --bin cluster_bench
//!   target/release/cluster_bench [--count 1000] [--runs 3]
//!   target/release/cluster_bench --render-only [--count 1000] [--runs 15]   # no cluster needed
//! Wall time and peak RSS of every step come from `/usr/bin/time -f '%e %M'` on a child process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

const NODES: usize = 3;

fn services_yml(count: usize, node: usize) -> String {
    services_yml_tagged(count, node, |i| format!("v1.{i}"))
}

/// [`services_yml`] with each microservice's image tag from `tag` (a version bump).
fn services_yml_tagged(count: usize, node: usize, tag: impl Fn(usize) -> String) -> String {
    let mut s = String::from("microservices:\n");
    for i in (0..count).filter(|i| i % NODES == node) {
        s.push_str(&format!(
            "  svc-{i:04}:\n    always: yes\n    tag: {}\n    env:\n      QUEUE_ORIGIN: q-{i}\n      POLLING_INTERVAL: 5\n      MYSQL_PORT: 3306\n",
            tag(i)
        ));
        if i % 4 == 0 {
            s.push_str(&format!(
                "    ports:\n      - name: http\n        protocol: TCP\n        port: {}\n",
                8000 + (i % 1000)
            ));
        }
    }
    s
}

fn write_inputs(dir: &Path, id: &str, count: usize) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut inv = format!("name: bench-{id}\nmode: cluster\nkubeconfig: kubeconfig\nhosts:\n");
    let names = [
        format!("b{id}-master"),
        format!("b{id}-w1"),
        format!("b{id}-w2"),
    ];
    for (n, name) in names.iter().enumerate() {
        let file = format!("services-{n}.yml");
        std::fs::write(dir.join(&file), services_yml(count, n))?;
        let role = if n == 0 { "master" } else { "worker" };
        inv.push_str(&format!(
            "  - name: {name}\n    address: 127.0.0.{}\n    role: {role}\n    services: {file}\n",
            n + 1
        ));
        if n == 0 {
            inv.push_str(&format!("    vars: {{namespace: {name}}}\n"));
        }
    }
    let path = dir.join("inventory.yml");
    std::fs::write(&path, inv)?;
    Ok(path)
}

/// Run a command under `/usr/bin/time`; returns (seconds, peak RSS MiB, exit code).
fn timed(cmd: &mut Command) -> anyhow::Result<(f64, f64, i32)> {
    let prog = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let envs: Vec<_> = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned())))
        .collect();
    let tf = std::env::temp_dir().join(format!("cluster-bench-time-{}", std::process::id()));
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%e %M")
        .arg("-o")
        .arg(&tf)
        .arg(&prog)
        .args(&args)
        .envs(envs)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .with_context(|| format!("running {prog:?} under /usr/bin/time"))?;
    let t = std::fs::read_to_string(&tf)?;
    let last = t.lines().last().unwrap_or("");
    let mut it = last.split_whitespace();
    let secs: f64 = it.next().unwrap_or("0").parse()?;
    let kib: f64 = it.next().unwrap_or("0").parse()?;
    let code = out.status.code().unwrap_or(-1);
    if code > 1 {
        bail!(
            "{prog:?} {args:?} failed ({code}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((secs, kib / 1024.0, code))
}

/// Run `cmd` `runs` times: the median wall time and the highest peak RSS.
fn median_of(runs: usize, cmd: &mut Command) -> anyhow::Result<(f64, f64)> {
    Ok(median(
        (0..runs)
            .map(|_| timed(cmd))
            .collect::<anyhow::Result<_>>()?,
    ))
}

fn median(mut v: Vec<(f64, f64, i32)>) -> (f64, f64) {
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let m = v[v.len() / 2];
    let peak = v.iter().map(|x| x.1).fold(0.0, f64::max);
    (m.0, peak)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child-apply") {
        return child_apply(Path::new(&args[2]), Path::new(&args[3]));
    }
    let opt = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let count = opt("--count", 1000);
    let runs = opt("--runs", 3).max(1);
    if args.iter().any(|a| a == "--render-only") {
        return render_only(count, runs);
    }
    let kubeconfig = PathBuf::from(
        std::env::var("AION_TEST_KUBECONFIG")
            .context("AION_TEST_KUBECONFIG unset: eval \"$(scripts/k8s-testenv.sh env)\"")?,
    );
    let kubectl = std::env::var("AION_KUBECTL").context("AION_KUBECTL unset")?;
    let me = std::env::current_exe()?;
    let ours = me.with_file_name("aion-reconcile");
    anyhow::ensure!(
        ours.exists(),
        "{} missing: build it in the same profile",
        ours.display()
    );

    let id = format!("{:x}", std::process::id());
    let dir = std::env::temp_dir().join(format!("aion-cluster-bench-{id}"));
    let inv = write_inputs(&dir, &id, count)?;
    let out = dir.join("rendered");

    // In-process render (library call, no file I/O).
    let lib = render_in_process(&inv, runs)?;
    let (loaded_inv, objects) = (&lib.inputs.0, lib.objects);

    let mut rows: Vec<(String, f64, f64)> = Vec::new();
    let render = median_of(
        runs,
        Command::new(&ours)
            .args(["render", "-i"])
            .arg(&inv)
            .arg("--out-dir")
            .arg(&out),
    )?;
    rows.push((
        "aion-reconcile render (CLI: load+validate+render+write)".into(),
        render.0,
        render.1,
    ));

    // First apply (setup, not measured as no-change).
    let setup = timed(
        Command::new(&me)
            .arg("--child-apply")
            .arg(&inv)
            .arg(&kubeconfig),
    )?;
    eprintln!("setup apply (creates {objects} objects): {:.2}s", setup.0);

    let kc = kubeconfig.to_str().unwrap();
    let ours_diff = median_of(
        runs,
        Command::new(&ours)
            .args(["diff", "-i"])
            .arg(&inv)
            .args(["--kubeconfig", kc]),
    )?;
    let files: Vec<String> = std::fs::read_dir(&out)?
        .filter_map(|e| e.ok())
        .map(|e| e.path().display().to_string())
        .filter(|p| p.ends_with(".yaml"))
        .collect();
    let mut fargs = Vec::new();
    for f in &files {
        fargs.push("-f".to_owned());
        fargs.push(f.clone());
    }
    let kubectl_diff = median_of(
        runs,
        Command::new(&kubectl)
            .args([
                "--kubeconfig",
                kc,
                "diff",
                "--server-side",
                "--field-manager=aion-reconcile",
            ])
            .args(&fargs),
    )?;
    let ours_apply = median_of(
        runs,
        Command::new(&me)
            .arg("--child-apply")
            .arg(&inv)
            .arg(&kubeconfig),
    )?;
    let kubectl_apply = median_of(
        runs,
        Command::new(&kubectl)
            .args([
                "--kubeconfig",
                kc,
                "apply",
                "--server-side",
                "--field-manager=aion-reconcile",
            ])
            .args(&fargs),
    )?;
    rows.push((
        "aion-reconcile diff (no changes)".into(),
        ours_diff.0,
        ours_diff.1,
    ));
    rows.push((
        "kubectl diff --server-side".into(),
        kubectl_diff.0,
        kubectl_diff.1,
    ));
    rows.push((
        "aion-reconcile apply, cluster part (no changes)".into(),
        ours_apply.0,
        ours_apply.1,
    ));
    rows.push((
        "kubectl apply --server-side (no changes)".into(),
        kubectl_apply.0,
        kubectl_apply.1,
    ));

    // Rollback (issue 16): revision 1 is the setup apply. A version bump of one microservice,
    // then of all of them, each applied (a revision) and rolled back by the CLI, alternating
    // between the last two revisions so that every rollback changes the same objects.
    let bump = |tag: &dyn Fn(usize) -> String| -> anyhow::Result<()> {
        for n in 0..NODES {
            std::fs::write(
                dir.join(format!("services-{n}.yml")),
                services_yml_tagged(count, n, tag),
            )?;
        }
        let applied = timed(
            Command::new(&me)
                .arg("--child-apply")
                .arg(&inv)
                .arg(&kubeconfig),
        )?;
        anyhow::ensure!(applied.2 == 0, "the version bump's apply failed");
        Ok(())
    };
    let rollbacks = |first: u32, changed: &str| -> anyhow::Result<(f64, f64)> {
        let mut samples = Vec::new();
        for r in 0..runs {
            // first, first+1, first, ...: the two revisions before the rollbacks started.
            let to = if r % 2 == 0 { first } else { first + 1 };
            let t = timed(
                Command::new(&ours)
                    .args([
                        "rollback",
                        "--yes",
                        "-o",
                        "json",
                        "--connect-timeout",
                        "2",
                        "-i",
                    ])
                    .arg(&inv)
                    .args(["--to", &to.to_string(), "--kubeconfig", kc]),
            )?;
            anyhow::ensure!(t.2 == 0, "rollback --to {to} ({changed}) failed");
            samples.push(t);
        }
        Ok(median(samples))
    };
    bump(&|i| {
        if i == 0 {
            "v2.0".into()
        } else {
            format!("v1.{i}")
        }
    })?;
    let one = rollbacks(1, "one microservice")?;
    bump(&|i| format!("v3.{i}"))?;
    // Revisions so far: 1 setup, 2 one bumped, then `runs` rollbacks, then this bump.
    let all_bumped = 3 + runs as u32;
    let before_all = all_bumped - 1;
    let all = rollbacks(before_all, "every microservice")?;
    let history = median_of(
        runs,
        Command::new(&ours)
            .args(["history", "-o", "json", "-i"])
            .arg(&inv)
            .args(["--kubeconfig", kc]),
    )?;
    rows.push((
        format!("aion-reconcile rollback, 1 of {count} microservices changed"),
        one.0,
        one.1,
    ));
    rows.push((
        format!("aion-reconcile rollback, all {count} microservices changed"),
        all.0,
        all.1,
    ));
    rows.push((
        "aion-reconcile history (every revision decoded)".into(),
        history.0,
        history.1,
    ));

    println!(
        "{count} microservices, 3 nodes, {objects} objects; median of {runs} run(s); in-process render {}\n",
        lib.summary()
    );
    println!("| step | wall time (s) | peak RSS (MiB) |\n|---|---:|---:|");
    for (name, secs, mib) in &rows {
        println!("| {name} | {secs:.2} | {mib:.1} |");
    }

    // Clean up: delete what the bench created.
    let rt = aion_reconcile::kubeclient::runtime()?;
    rt.block_on(async {
        let client = aion_reconcile::kubeclient::client_from(&kubeconfig).await?;
        aion_reconcile::cluster::down(&client, &loaded_inv.name, &Default::default()).await?;
        aion_reconcile::cluster::history::History::of(&client, loaded_inv)
            .delete_all()
            .await?;
        anyhow::Ok(())
    })?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `--render-only`: the in-process render alone (no cluster needed), median of `runs`;
/// for profiling (`perf record target/release/cluster_bench --render-only --runs 50`).
fn render_only(count: usize, runs: usize) -> anyhow::Result<()> {
    let id = format!("{:x}", std::process::id());
    let dir = std::env::temp_dir().join(format!("aion-cluster-bench-{id}"));
    let inv = write_inputs(&dir, &id, count)?;
    let lib = render_in_process(&inv, runs)?;
    println!(
        "{count} microservices, 3 nodes, {} objects; in-process render {}",
        lib.objects,
        lib.summary()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

struct RenderTimes {
    inputs: Inputs,
    /// Seconds per run, sorted.
    secs: Vec<f64>,
    /// CPU seconds (user + system) of the whole loop divided by the runs: unlike wall time,
    /// hardly affected by other processes on a loaded machine.
    cpu_per_run: Option<f64>,
    objects: usize,
}

/// CPU time (user + system) this process has used so far, in clock ticks, from `/proc/self/stat`.
fn cpu_ticks() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 on Linux if that fails).
fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

impl RenderTimes {
    fn summary(&self) -> String {
        let ms = |s: f64| s * 1000.0;
        let cpu = self
            .cpu_per_run
            .map(|c| format!("; CPU time {:.1} ms per run", ms(c)))
            .unwrap_or_default();
        format!(
            "median of {}: {:.1} ms (min {:.1}, max {:.1}){cpu}",
            self.secs.len(),
            ms(self.secs[self.secs.len() / 2]),
            ms(self.secs[0]),
            ms(self.secs[self.secs.len() - 1])
        )
    }
}

/// Load the inputs once, then time `runs` library renders (no file I/O).
fn render_in_process(inv: &Path, runs: usize) -> anyhow::Result<RenderTimes> {
    let inputs = load_inputs(inv)?;
    let mut secs = Vec::new();
    let mut objects = 0;
    let mut cpu = 0.0;
    for _ in 0..runs.max(1) {
        let before = cpu_ticks();
        let t = Instant::now();
        let m = aion_reconcile::render::render(&inputs.0, &inputs.1)?;
        secs.push(t.elapsed().as_secs_f64());
        cpu += cpu_ticks()
            .zip(before)
            .map_or(f64::NAN, |(after, before)| after - before);
        objects = m.objects().count();
    }
    let cpu_per_run = Some(cpu / ticks_per_second() / secs.len() as f64).filter(|c| c.is_finite());
    secs.sort_by(f64::total_cmp);
    Ok(RenderTimes {
        inputs,
        secs,
        cpu_per_run,
        objects,
    })
}

type Inputs = (
    aion_model::inventory::Inventory,
    Vec<(String, aion_model::services::ServicesFile)>,
);

/// The bench inventory and its hosts' `services.yml`, loaded as the CLI would.
fn load_inputs(inv: &Path) -> anyhow::Result<Inputs> {
    let loaded_inv = aion_model::inventory::load(inv)?.value;
    let mut services = Vec::new();
    for h in &loaded_inv.hosts {
        let p = h.services.clone().context("bench hosts have services")?;
        services.push((h.name.clone(), aion_model::services::load(&p)?.value));
    }
    Ok((loaded_inv, services))
}

/// The cluster part of `apply`: load, render, plan (dry-run + prune listing), execute.
fn child_apply(inv: &Path, kubeconfig: &Path) -> anyhow::Result<()> {
    let (inv, manifests) = aion_reconcile::reconcile::load_and_render(inv)?;
    let rt = aion_reconcile::kubeclient::runtime()?;
    rt.block_on(async {
        let client = aion_reconcile::kubeclient::client_from(kubeconfig).await?;
        let plan = aion_reconcile::cluster::plan(&client, &manifests, &inv).await?;
        let report =
            aion_reconcile::cluster::apply_plan(&client, &plan, &Default::default()).await?;
        eprintln!("{}", report.summary());
        // As `apply` does: a cluster apply that changed something is a revision.
        if plan.has_changes() {
            let history = aion_reconcile::cluster::history::History::of(&client, &inv);
            let inputs = aion_reconcile::cluster::history::input_hashes(&inv)?;
            let n = history
                .record(
                    &manifests,
                    aion_reconcile::revision::Origin::Apply,
                    inputs,
                    &Default::default(),
                    inv.revision_history,
                )
                .await?;
            eprintln!("revision {n} recorded");
        }
        anyhow::Ok(())
    })
}
