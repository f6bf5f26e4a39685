//! The config loader and compiler on arbitrary text: an error, never a
//! panic, and a refused config never replaces the one in force.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let store = mesh_core::store::Store::new();
    let loaded = mesh_core::load::load_str(std::path::Path::new("fuzz.yaml"), text);
    let before = store.stats().version;
    if store.apply(loaded).is_err() {
        assert_eq!(store.stats().version, before, "a refused config was applied");
    }
});
