//! Deterministic random-input test (runs in CI on stable; the cargo-fuzz targets in fuzz/
//! explore further): mutated real files never make the loaders or the rules panic.

use std::path::Path;

use aion_model::{inventory, services, validate};

/// xorshift64*: deterministic, no dependency.
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

const TOKENS: &[&str] = &[
    ":",
    "-",
    " ",
    "\n",
    "  ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "&a",
    "*a",
    "<<: ",
    "!!str ",
    "!!int ",
    "'",
    "\"",
    "?",
    "|",
    ">",
    "#",
    "---\n",
    "...\n",
    "~",
    "yes",
    "\"yes\"",
    "0x",
    "0o7",
    "1e9",
    "99999999999",
    "-1",
    "null",
    "\t",
    "%YAML 1.1\n",
    "é",
    "\u{feff}",
    "scale: ",
    "ports:\n  - ",
    "nodePort: 30000",
    "microservices:\n",
    "hosts:\n  - ",
    "all:\n  children:\n",
];

fn mutate(rng: &mut Rng, seed: &str) -> String {
    let mut s: Vec<char> = seed.chars().collect();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(s.len() + 1);
        match rng.below(4) {
            0 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                s.splice(at..at, t.chars());
            }
            1 if !s.is_empty() => {
                let end = (at + rng.below(16)).min(s.len());
                s.drain(at.min(end)..end);
            }
            2 => s.truncate(at),
            _ => {
                // duplicate a slice somewhere else
                let a = rng.below(s.len() + 1);
                let b = (a + rng.below(40)).min(s.len());
                let piece: Vec<char> = s[a..b].to_vec();
                let at = at.min(s.len());
                s.splice(at..at, piece);
            }
        }
    }
    s.into_iter().collect()
}

fn seeds(dir: &str) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn mutated_services_files_never_panic() {
    let seeds = seeds("services");
    let inv = inventory::load_str(
        "hosts:\n  - {name: m, address: 10.0.0.1, role: master}\n",
        Path::new("/x/inv.yml"),
    )
    .unwrap()
    .value;
    let mut rng = Rng(0x5eed_0001);
    let mut loaded = 0;
    for _ in 0..4000 {
        let seed = &seeds[rng.below(seeds.len())];
        let text = mutate(&mut rng, seed);
        if let Ok(l) = services::load_str(&text, Path::new("m.yml")) {
            loaded += 1;
            for d in validate::loaded_services(&l, Some(&inv)) {
                assert!(d.span.line >= 1, "diagnostic without a line: {d}");
            }
        }
    }
    // The mutations must not be so destructive that nothing loads.
    assert!(loaded > 1000, "only {loaded} of 4000 loaded");
}

#[test]
fn mutated_inventories_never_panic() {
    let seeds = seeds("inventory");
    let mut rng = Rng(0x5eed_0002);
    for _ in 0..3000 {
        let seed = &seeds[rng.below(seeds.len())];
        let text = mutate(&mut rng, seed);
        if let Ok(l) = inventory::load_str(&text, Path::new("/x/inv.yml")) {
            for d in &l.diagnostics {
                let _ = d.to_string();
            }
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x5eed_0003);
    for _ in 0..3000 {
        let len = rng.below(200);
        let text: String = (0..len)
            .map(|_| {
                let t = TOKENS[rng.below(TOKENS.len())];
                if rng.below(3) == 0 {
                    t.to_owned()
                } else {
                    ((b' ' + rng.below(95) as u8) as char).to_string()
                }
            })
            .collect();
        let _ = services::load_str(&text, Path::new("r.yml"));
        let _ = inventory::load_str(&text, Path::new("/x/r.yml"));
    }
}
