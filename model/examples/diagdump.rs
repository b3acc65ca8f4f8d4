//! Print everything the loaders report for each file given (diagnostics with pointer and hint,
//! the decoded value), one block per file, so two builds can be compared byte for byte:
//! `cargo run -p aion-model --example diagdump -- services|inventory FILE...`.
use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((kind, files)) = args.split_first() else {
        eprintln!("usage: diagdump services|inventory FILE...");
        std::process::exit(2);
    };
    for f in files {
        println!("=== {f}");
        let Ok(text) = std::fs::read_to_string(f) else {
            println!("(not UTF-8)");
            continue;
        };
        let path = Path::new(f);
        if kind == "services" {
            match aion_model::services::load_str(&text, path) {
                Err(e) => println!("ERR {e} | {:?}", e.diagnostic()),
                Ok(l) => {
                    for d in aion_model::validate::loaded_services(&l, None) {
                        println!("{d} | {} | {:?}", d.pointer, d.hint);
                    }
                    for d in &l.diagnostics {
                        println!("L {d} | {} | {:?}", d.pointer, d.hint);
                    }
                    let v = &l.value;
                    println!(
                        "{:?}\n{:?}\n{:?} {:?} {:?}",
                        v.microservices, v.devices, v.device_name, v.debug, v.span
                    );
                }
            }
        } else {
            match aion_model::inventory::load_str(&text, path) {
                Err(e) => println!("ERR {e} | {:?}", e.diagnostic()),
                Ok(l) => {
                    for d in &l.diagnostics {
                        println!("{d} | {} | {:?}", d.pointer, d.hint);
                    }
                    println!("{:?}", l.value);
                }
            }
        }
    }
}
