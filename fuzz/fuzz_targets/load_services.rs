//! No input makes the services.yml loader, the schema check or the semantic rules panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(loaded) = aion_model::services::load_str(text, Path::new("fuzz.yml")) {
        let diags = aion_model::validate::loaded_services(&loaded, None);
        for d in &diags {
            let _ = d.to_string();
        }
    }
});
