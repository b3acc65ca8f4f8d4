//! Phase-by-phase time and RSS of loading one services.yml, the way `services::load` does it:
//! `cargo run --release -p aion-model --example prof -- FILE`.
use std::path::Path;
use std::time::Instant;

fn rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("VmRSS") || l.starts_with("VmHWM"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    let f = std::env::args().nth(1).expect("usage: prof FILE");
    let text = std::fs::read_to_string(&f).unwrap();
    println!(
        "start {} node={} value={} scalar={} pair={} span={}",
        rss(),
        std::mem::size_of::<aion_model::yaml::Node>(),
        std::mem::size_of::<aion_model::yaml::Value>(),
        std::mem::size_of::<aion_model::yaml::Scalar>(),
        std::mem::size_of::<aion_model::yaml::Pair>(),
        std::mem::size_of::<aion_model::Span>()
    );
    let t = Instant::now();
    let doc = aion_model::yaml::parse_document(&text, Path::new(&f)).unwrap();
    println!("parse {:?} {}", t.elapsed(), rss());
    drop(text);
    let root = doc.root.as_ref().unwrap();
    let t = Instant::now();
    let s = aion_model::schema::check_services(root, &doc.file);
    println!(
        "schema (one microservice at a time) {:?} {} {}",
        t.elapsed(),
        s.len(),
        rss()
    );
    let t = Instant::now();
    let l = aion_model::services::from_document(doc);
    println!("typed (tree freed as decoded) {:?} {}", t.elapsed(), rss());
    let t = Instant::now();
    let v = aion_model::validate::services(&l.value, None);
    println!("semantic {:?} {} {}", t.elapsed(), v.len(), rss());
}
