//! Phase-by-phase time and RSS of loading one services.yml: `cargo run --release -p aion-model --example prof -- FILE`.
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
    let f = std::env::args().nth(1).unwrap();
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
    let root = doc.root.unwrap();
    let t = Instant::now();
    let l = aion_model::services::from_node(&root);
    println!("typed {:?} {}", t.elapsed(), rss());
    let t = Instant::now();
    let j = root.to_json();
    println!("to_json {:?} {}", t.elapsed(), rss());
    let t = Instant::now();
    let s = aion_model::schema::check_json(aion_model::schema::Kind::Services, &root, &j);
    println!("schema {:?} {} {}", t.elapsed(), s.len(), rss());
    let t = Instant::now();
    let v = aion_model::validate::services(&l.value, None);
    println!("semantic {:?} {} {}", t.elapsed(), v.len(), rss());
}
