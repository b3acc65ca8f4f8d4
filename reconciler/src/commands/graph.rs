//! `aion-reconcile graph (-i INVENTORY | SERVICES_YML) [--format svg|dot|mermaid] [-o FILE]`:
//! the kanban graph (devices, their microservice instances, `nextService` edges) as SVG (drawn
//! here, no Graphviz), DOT or Mermaid.
//!
//! Input is checked exactly as `validate` checks it; with any error nothing is drawn and the
//! findings are printed the way `validate` prints them. Warnings are drawn (red targets) and
//! listed on stderr. `-o FILE` is written atomically (temp file + rename in its directory).

use std::fs;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use aion_model::{Diagnostic, LoadError, ServicesFile, inventory, services, validate};

use crate::commands::validate::{Report, render_human};
use crate::graph::{self, Graph};
use crate::render::HostName;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphFormat {
    /// A standalone SVG drawing (laid out by aion-reconcile itself).
    Svg,
    /// Graphviz DOT.
    Dot,
    /// A Mermaid flowchart.
    Mermaid,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["inventory", "services"])))]
pub struct Args {
    /// Inventory (native or Ansible-style YAML): one box per host with its namespace's
    /// microservices, from the services files it names.
    #[arg(short = 'i', long = "inventory", value_name = "INVENTORY")]
    pub inventory: Option<PathBuf>,
    /// A single services.yml, drawn as one device.
    #[arg(value_name = "SERVICES_YML")]
    pub services: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = GraphFormat::Svg)]
    pub format: GraphFormat,
    /// Write to FILE (atomically) instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Why `graph` drew nothing.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// The input has errors; `report` is what `validate` would print.
    #[error("{what}: {errors} error(s); nothing drawn")]
    Invalid {
        what: String,
        errors: usize,
        report: String,
    },
    #[error("{0}")]
    Read(String),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub fn run(args: &Args) -> anyhow::Result<u8> {
    let (graph, warnings) = match load(args) {
        Ok(v) => v,
        Err(e) => {
            if let GraphError::Invalid { report, .. } = &e {
                eprint!("{report}");
            }
            return Err(e.into());
        }
    };
    for w in &warnings {
        eprintln!("{w}");
    }
    let text = render(&graph, args.format);
    match &args.output {
        Some(path) => {
            write_atomically(path, text.as_bytes()).map_err(|source| GraphError::Write {
                path: path.clone(),
                source,
            })?
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|source| GraphError::Write {
                    path: PathBuf::from("<stdout>"),
                    source,
                })?;
        }
    }
    Ok(0)
}

/// The graph in `format` (pure).
pub fn render(graph: &Graph, format: GraphFormat) -> String {
    match format {
        GraphFormat::Svg => graph::svg::render(graph),
        GraphFormat::Dot => graph::dot::render(graph),
        GraphFormat::Mermaid => graph::mermaid::render(graph),
    }
}

/// Read and check the input as `validate` does, then build the graph. Returns the warnings
/// (to print), or [`GraphError::Invalid`] with `validate`'s report when there is an error.
pub fn load(args: &Args) -> Result<(Graph, Vec<Diagnostic>), GraphError> {
    let mut report = Report::default();
    let read = |path: &Path, report: &mut Report| -> Result<String, GraphError> {
        let text = fs::read_to_string(path)
            .map_err(|e| GraphError::Read(format!("cannot read {}: {e}", path.display())))?;
        report.sources.insert(path.to_path_buf(), text.clone());
        report.files_checked += 1;
        Ok(text)
    };
    let load_error = |e: LoadError, report: &mut Report| match e.diagnostic() {
        Some(d) => {
            report.diagnostics.push(d);
            Ok(())
        }
        None => Err(GraphError::Read(e.to_string())),
    };

    let (inv, what) = match (&args.inventory, &args.services) {
        (Some(path), _) => {
            let text = read(path, &mut report)?;
            match inventory::load_str(&text, path) {
                Ok(l) => {
                    report.diagnostics.extend(l.diagnostics);
                    (Some(l.value), path)
                }
                Err(e) => {
                    load_error(e, &mut report)?;
                    return Err(invalid(path, report));
                }
            }
        }
        (None, Some(path)) => (None, path),
        (None, None) => {
            return Err(GraphError::Read(
                "give -i INVENTORY or a SERVICES_YML".to_owned(),
            ));
        }
    };
    // The files to draw, each once, in host order.
    let paths: Vec<PathBuf> = match &inv {
        Some(inv) => {
            let mut paths = Vec::new();
            for h in &inv.hosts {
                if let Some(s) = &h.services
                    && !paths.contains(s)
                {
                    paths.push(s.clone());
                }
            }
            paths
        }
        None => vec![what.clone()],
    };
    let mut files: Vec<(PathBuf, ServicesFile)> = Vec::new();
    for path in &paths {
        let text = read(path, &mut report)?;
        match services::load_str(&text, path) {
            Ok(l) => {
                report
                    .diagnostics
                    .extend(validate::loaded_services(&l, inv.as_ref()));
                files.push((path.clone(), l.value));
            }
            Err(e) => load_error(e, &mut report)?,
        }
    }
    if inv.is_some() && files.len() > 1 {
        let refs: Vec<&ServicesFile> = files.iter().map(|(_, f)| f).collect();
        report
            .diagnostics
            .extend(validate::node_ports_across(&refs));
    }
    aion_model::diag::sort(&mut report.diagnostics);
    if report.errors() > 0 {
        return Err(invalid(what, report));
    }
    let graph = match &inv {
        Some(inv) => {
            let per_host: Vec<(HostName, ServicesFile)> = inv
                .hosts
                .iter()
                .filter_map(|h| {
                    let path = h.services.as_ref()?;
                    let (_, f) = files.iter().find(|(p, _)| p == path)?;
                    Some((h.name.clone(), f.clone()))
                })
                .collect();
            graph::from_inventory(inv, &per_host)
        }
        None => match files.first() {
            Some((_, f)) => graph::from_services(f),
            None => return Err(GraphError::Read("no services.yml loaded".to_owned())),
        },
    };
    Ok((graph, report.diagnostics))
}

fn invalid(what: &Path, report: Report) -> GraphError {
    // The report goes to stderr: colour only when that is a terminal and NO_COLOR is unset.
    let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::io::stderr().is_terminal();
    GraphError::Invalid {
        what: what.display().to_string(),
        errors: report.errors(),
        report: render_human(&report, color),
    }
}

/// Write `content` to `path` through a temp file in the same directory and a rename, so
/// `path` is either the old file or the whole new one; the temp file is removed on failure.
pub fn write_atomically(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.svg");
        fs::write(&path, "old").unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["g.svg"]);
        // A directory in the way: the rename fails, nothing half-written stays behind.
        let blocked = dir.path().join("sub");
        fs::create_dir(&blocked).unwrap();
        fs::write(blocked.join("x"), "").unwrap();
        assert!(write_atomically(&blocked, b"data").is_err());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
