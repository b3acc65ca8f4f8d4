//! No input makes the inventory loader (native or Ansible-style) panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(loaded) = aion_model::inventory::load_str(text, Path::new("/fuzz/inventory.yml")) {
        for d in &loaded.diagnostics {
            let _ = d.to_string();
        }
    }
});
